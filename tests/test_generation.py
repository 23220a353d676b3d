import pytest

from sqlora.generation import extract_sql


@pytest.mark.parametrize(
    "raw, sql",
    [
        ("SELECT count(*) FROM singer", "SELECT count(*) FROM singer"),
        ("SELECT name\nFROM singer\nWHERE age > 3;\nThis query lists...", "SELECT name FROM singer WHERE age > 3"),
        ("```sql\nSELECT a FROM t\n```\nExplanation", "SELECT a FROM t"),
        ("SELECT a FROM t\n\nThe answer is above.", "SELECT a FROM t"),
        ("SELECT a FROM t ###Input: more", "SELECT a FROM t"),
        ("SELECT a FROM t<|im_end|><|im_start|>user", "SELECT a FROM t"),
        ("", ""),
        ("   \n", ""),
    ],
)
def test_extract_sql(raw, sql):
    assert extract_sql(raw) == sql
