"""The README's generated blocks: the text between `<!-- name -->` and `<!-- /name -->` markers."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(name: str, block: str, readme: Path = README) -> None:
    """Put `block` between the markers `name`, appending the markers when the README has none."""
    if not readme.is_file():
        return
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = readme.read_text()
    if start in text and end in text:
        text = text[: text.index(start) + len(start)] + "\n" + block + text[text.index(end):]
    else:
        text = text.rstrip() + f"\n\n{start}\n{block}{end}\n"
    readme.write_text(text)
