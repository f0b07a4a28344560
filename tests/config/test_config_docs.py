"""The TOML reference is generated from the model Structs and lists every key."""

from __future__ import annotations

from pathlib import Path

import msgspec

from pachinko.config.reference import TABLES, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "toml-reference.md"


def test_every_key_of_every_table_is_documented() -> None:
    text = DOC.read_text()
    for title, struct in TABLES:
        assert f"\n## {title}\n" in text, (
            f"{title} missing: run python -m pachinko.config.reference"
        )
        section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        for field in msgspec.structs.fields(struct):
            assert f"| `{field.encode_name}` |" in section, (
                f"{title}.{field.encode_name} is not documented: regenerate docs/toml-reference.md "
                "with python -m pachinko.config.reference"
            )


def test_render_documents_every_key() -> None:
    text = render()
    for _, struct in TABLES:
        for field in msgspec.structs.fields(struct):
            assert f"| `{field.encode_name}` |" in text


def test_the_reference_is_what_the_model_says() -> None:
    # NOTE: the page is generated: an edit by hand would be lost at the next
    #   regeneration, so the docstrings of the model and Settings are the source.
    assert DOC.read_text() == render(), (
        "docs/toml-reference.md differs from the model: regenerate it with "
        "python -m pachinko.config.reference > docs/toml-reference.md"
    )
