"""The README's Python examples run as written (in order, sharing one namespace)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_execute():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2, "README should show runnable examples"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)  # noqa: S102


def test_readme_first_section_has_exactly_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert [c.strip() for c in commands] == [
        'pip install -e ".[test]" && python scripts/demo.py',
        "python -m pytest -q",
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m pytest -q\n" in ci
