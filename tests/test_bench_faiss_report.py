"""The FAISS benchmark says what it measured about the machine's load, not a fixed sentence."""
from models.bench_faiss import load_sentence


def test_load_sentence_reports_measured_load():
    assert "not recorded" in load_sentence(None)
    quiet = load_sentence([0.4, 1.9], cores=2)
    assert "0.4–1.9 on 2 cores" in quiet and "nothing else" in quiet
    busy = load_sentence([1.0, 4.2], cores=2)
    assert "shared the machine" in busy and "upper-side" in busy
