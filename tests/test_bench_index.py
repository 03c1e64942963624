"""The index-build benchmark keeps one row per machine, so CPU and GPU runs add up to one table."""
from models.bench_index import HEADER, merge_rows


def test_a_machine_replaces_its_own_row_and_keeps_the_others():
    gpu = "| H100 + 16 CPU cores | EGL | cuda | 12.5 | 203 | 0.03 | 15 | 30 | 1.87 | 1361 |"
    cpu_old = "| x86_64 CPU, 2 cores | egl | cpu | 19.9 | 128 | 4.49 | 2 | 2 | 19.53 | 130 |"
    cpu_new = "| x86_64 CPU, 2 cores | egl | cpu | 18.0 | 141 | 4.00 | 1 | 6 | 18.00 | 141 |"
    block = merge_rows(HEADER + gpu + "\n" + cpu_old + "\n", cpu_new, "x86_64 CPU, 2 cores")
    lines = block.splitlines()
    assert lines[0].startswith("| machine") and gpu in lines and cpu_new in lines and cpu_old not in lines
    assert len(lines) == 4
    assert merge_rows("", gpu, "H100 + 16 CPU cores") == HEADER + gpu + "\n"
