"""Schema-constrained decoding: the SQL lexer's verdicts, the token choice in both engines, and that
every gold query of the sample (and of the real Spider, where present) passes its own schema."""

from __future__ import annotations

import json

import pytest
import torch

from sqlora.data.layouts import load_schemas
from sqlora.data.schema import Column, DatabaseSchema
from sqlora.infer.constrained import SchemaNames, TokenChecker, sql_resolves, state_of
from sqlora.infer.loading import load_for_inference
from tests.helpers import save_scripted_llama, token_id

SCHEMA = DatabaseSchema(
    db_id="music",
    tables=["singer", "concert", "singer_in_concert"],
    columns=[
        Column(0, "Singer_ID", "number"), Column(0, "Name", "text"), Column(0, "Age", "number"),
        Column(1, "concert_ID", "number"), Column(1, "concert_Name", "text"), Column(1, "Year", "text"),
        Column(2, "concert_ID", "number"), Column(2, "Singer_ID", "number"),
    ],
    primary_keys=[(1,), (4,)],
    foreign_keys=[(7, 4), (8, 1)],
)  # fmt: skip
NAMES = SchemaNames.of(SCHEMA)

VALID = [
    "SELECT name FROM singer",
    "select NAME, age from SINGER where age > 30 order by age desc limit 1",
    "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id",
    "SELECT T2.concert_name FROM singer_in_concert T1 JOIN concert T2 ON T1.concert_id = T2.concert_id",
    "SELECT count(*) AS n FROM singer GROUP BY age ORDER BY n",
    "SELECT name FROM singer WHERE name = \"Joe Sharp\" OR name LIKE '%tom%'",
    "SELECT singer.name FROM singer WHERE singer.age >= 2.5",
    "SELECT `Name` FROM `singer` WHERE [Age] = 1",
    "SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert)",
    "SELECT a.name FROM (SELECT name FROM singer) AS a",
    "SELECT name FROM singer AS a JOIN (SELECT name AS n FROM singer) AS b ORDER BY b.n, n",
    "SELECT T1.name FROM singer AS T1 UNION SELECT T2.concert_name FROM concert AS T2",
    "WITH old AS (SELECT * FROM singer WHERE age > 60) SELECT name FROM old",
    "SELECT avg(age), max(age), min(age) FROM singer",
    "SELECT T1.* FROM singer AS T1",
    'SELECT "singer".name FROM singer',
]
INVALID = [  # and the text at which it breaks: the first character no identifier of the schema allows
    ("SELECT nam FROM singer", "SELECT nam "),  # no such column: breaks when the word ends
    ("SELECT name FROM singers", "SELECT name FROM singers"),  # no such table
    ("SELECT name FROM concert_name", "SELECT name FROM concert_"),  # a column where a table must stand
    ("SELECT singer.year FROM singer", "SELECT singer.y"),  # a column of another table
    ("SELECT name FROM singer AS T1 WHERE T1.year = 1", "SELECT name FROM singer AS T1 WHERE T1.y"),
    ("SELECT `nme` FROM singer", "SELECT `nm"),
    ("SELECT foo.name FROM singer", "SELECT foo"),  # neither a name nor an alias to come (a letter and digits)
    ("SELECT 'a'.name FROM singer", "SELECT 'a'."),
]


@pytest.mark.parametrize("sql", VALID)
def test_valid_sql_passes(sql):
    assert sql_resolves(NAMES, sql), sql


@pytest.mark.parametrize("sql, breaks", INVALID)
def test_invalid_sql_breaks_where_the_identifier_becomes_impossible(sql, breaks):
    first_bad = next(n for n in range(1, len(sql) + 1) if state_of(NAMES, sql[:n]) is None)
    assert sql[:first_bad] == breaks
    assert not sql_resolves(NAMES, sql)


def test_aliases_used_before_definition_are_checked_at_the_end():
    state = state_of(NAMES, "SELECT T1.name FROM concert AS T1")
    assert state is not None and state.can_end() and not state.resolves()  # concert has no column name
    assert not sql_resolves(NAMES, "SELECT T3.name FROM singer AS T1")  # T3 never defined
    assert sql_resolves(NAMES, "SELECT T1.name FROM singer AS T1")
    assert not sql_resolves(NAMES, "SELECT T1.year FROM singer AS T1")  # year is concert's


def test_end_needs_complete_identifiers():
    assert not state_of(NAMES, "SELECT nam").can_end()  # only a prefix of name
    assert not state_of(NAMES, "SELECT T1.").can_end()
    assert not state_of(NAMES, "SELECT `nam").can_end()
    assert state_of(NAMES, "SELECT name FROM singer WHERE name = 'unfinished").can_end()  # literals are free


def test_case_insensitive_and_literals_free():
    assert sql_resolves(NAMES, "SeLeCt NaMe FrOm SiNgEr WHERE name = 'NotAColumn' AND age = 3e2")
    assert sql_resolves(NAMES, 'SELECT name FROM singer WHERE name = "not_a_column_either"')


def test_copy_is_independent():
    state = state_of(NAMES, "SELECT name FROM singer AS T1 WHERE ")
    other = state.copy()
    assert other.feed("T2.age") and state.aliases == {"t1": "singer"} and state.pending == []


def _gold(folder, files):
    schemas = {k: SchemaNames.of(v) for k, v in load_schemas(folder / "tables.json").items()}
    return [(schemas[e["db_id"]], e["query"]) for name in files for e in json.loads((folder / name).read_text())]


def test_every_sample_gold_query_passes(sample_dir):
    gold = _gold(sample_dir, ["train.json", "dev.json"])
    assert len(gold) > 1000
    assert [sql for names, sql in gold if not sql_resolves(names, sql)] == []


def test_spider_gold_queries_pass(spider_dir):
    """Of Spider's 8034 train + dev gold queries, one names a table its database lacks (it fails in SQLite too)."""
    failing = [sql for names, sql in _gold(spider_dir, ["train_spider.json", "dev.json"]) if not sql_resolves(names, sql)]
    assert len(failing) == 1 and "Ref_Company_Types" in failing[0]


# --- token choice -----------------------------------------------------------------------------------------


class _Tokenizer:
    """Whole words as tokens: enough to see which tokens the checker lets through."""

    def __init__(self, pieces):
        self.pieces = ["a", *pieces]

    def tokenize(self, text):
        return [text]

    def convert_tokens_to_ids(self, tokens):
        return [self.pieces.index(t) for t in tokens]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids if i != len(self.pieces))


PIECES = [" name", " nam", " age", " singers", " singer", " year", " FROM", " T1", ".", " concert_name"]


def test_first_allowed_follows_the_model_order():
    tokenizer = _Tokenizer(PIECES)
    eos = len(tokenizer.pieces)
    checker = TokenChecker(tokenizer, {eos})
    ids = {p: tokenizer.pieces.index(p) for p in PIECES}
    scores = torch.zeros(eos + 1)
    for rank, piece in enumerate([" year", " nam", " concert_name", " name", " age"]):
        scores[ids[piece]] = 10.0 - rank
    state = state_of(NAMES, "SELECT")
    # " year" is a column of concert, allowed before FROM; " nam" a prefix of name
    assert checker.first_allowed(state, scores, 3) == [ids[" year"], ids[" nam"], ids[" concert_name"]]
    state = state_of(NAMES, "SELECT name FROM")
    scores[ids[" singers"]], scores[ids[" singer"]] = 20.0, 19.0
    assert checker.first_allowed(state, scores, 1) == [ids[" singer"]]
    scores[eos] = 30.0
    assert checker.first_allowed(state_of(NAMES, "SELECT name FROM singer"), scores, 1) == [eos]
    assert checker.first_allowed(state_of(NAMES, "SELECT name FROM sing"), scores, 1) == []  # sing must go on


def test_first_allowed_for_beams_looks_only_among_the_most_probable():
    """A beam search's several tokens come from the SAMPLED most probable (a bounded cost per beam and
    step); when none of those is allowed, the best allowed token anywhere."""
    tokenizer = _Tokenizer(PIECES)
    eos = len(tokenizer.pieces)
    checker = TokenChecker(tokenizer, {eos})
    checker.SAMPLED = 2
    ids = {p: tokenizer.pieces.index(p) for p in PIECES}
    scores = torch.zeros(eos + 1)
    for rank, piece in enumerate([" year", " nam", " concert_name", " name"]):
        scores[ids[piece]] = 10.0 - rank
    assert checker.first_allowed(state_of(NAMES, "SELECT"), scores, 3) == [ids[" year"], ids[" nam"]]
    state = state_of(NAMES, "SELECT name FROM")  # a table only: none of the two most probable
    scores[ids[" singers"]], scores[ids[" singer"]] = 1.0, 0.5
    assert checker.first_allowed(state, scores, 3) == [ids[" singer"]]


def test_constrained_nucleus_is_the_nucleus_over_allowed_tokens():
    tokenizer = _Tokenizer(PIECES)
    eos = len(tokenizer.pieces)
    checker = TokenChecker(tokenizer, {eos})
    ids = {p: tokenizer.pieces.index(p) for p in PIECES}
    logits = torch.full((eos + 1,), -30.0)
    logits[[ids[" singers"], ids[" singer"], ids[" name"]]] = torch.tensor([3.0, 2.0, 1.0])
    tokens, masses = checker.nucleus(state_of(NAMES, "SELECT name FROM"), logits, 1.0, 0.99)
    assert tokens == [ids[" singer"]]  # singers forbidden, name (a column) cannot stand after FROM
    probs = torch.softmax(logits, -1)
    tokens, masses = checker.nucleus(state_of(NAMES, "SELECT"), logits, 1.0, 1.0)
    assert tokens[:2] == [ids[" name"], ids[" singer"]] or set(tokens[:2]) == {ids[" singer"], ids[" name"]}
    assert masses[0] == pytest.approx(float(probs[tokens[0]]))


# --- both engines -----------------------------------------------------------------------------------------

# A scripted model (the next token depends on the last one only): its first choices break the schema,
# its second ones do not. Unconstrained it writes "SELECT weight FROM restaurants"; constrained, "SELECT
# name FROM singer".
PREFERENCES = {
    " alpha": ["SELECT"],
    "SELECT": [" weight", " name"],
    " weight": [" FROM"],
    " name": [" FROM"],
    " FROM": [" restaurants", " singer"],
    " restaurants": ["<eos>"],
    " singer": ["<eos>"],
}


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, tmp_path_factory):
    from sqlora.model.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    successors = {token_id(tokenizer, a): [token_id(tokenizer, b) for b in ranked] for a, ranked in PREFERENCES.items()}
    out = save_scripted_llama(tiny_model_dir, tmp_path_factory.mktemp("scripted-constrained") / "model", successors)
    model, tokenizer = load_for_inference(out)
    prompts = [f"Schema: {'singer has columns name, age. ' * n}Question {n}: alpha" for n in (1, 5, 2, 9, 3)]
    return model, tokenizer, prompts


@pytest.mark.parametrize("decoding, engine", [("greedy", "sqlora"), ("greedy", "transformers"), ("beam", "auto")])
def test_constrained_decoding_takes_the_best_allowed_token(scripted, decoding, engine):
    from sqlora.infer.engine import generate

    model, tokenizer, prompts = scripted
    options = dict(batch_size=4, max_new_tokens=12, progress=False, decoding=decoding, engine=engine)
    free = generate(model, tokenizer, prompts, **options)
    assert {g.sql for g in free} == {"SELECT weight FROM restaurants"}
    constrained = generate(model, tokenizer, prompts, constraints=[NAMES] * len(prompts), constrained=True, **options)
    assert [(g.sql, g.stop, g.constraint) for g in constrained] == [("SELECT name FROM singer", "eos", "held")] * len(prompts)
    assert {g.constraint for g in free} == {""}


@pytest.mark.parametrize(
    "decoding, engine, expected",
    [
        ("greedy", "sqlora", ("SELECT weight FROM restaurants", "released")),
        ("greedy", "transformers", ("SELECT weight FROM restaurants", "released")),
        ("beam", "auto", ("SELECT name FROM singer", "held")),  # the best beam that stays in the schema
    ],
)
def test_no_admissible_token_releases_the_row(scripted, decoding, engine, expected, monkeypatch):
    """A schema the model cannot write any token of (the checker admits none): the rows neither hang nor
    fail; they go on unconstrained and are marked released. Greedy: the unconstrained SQL; beam search:
    the next candidate, the first beam that did not need releasing."""
    from sqlora.infer.engine import generate

    model, tokenizer, prompts = scripted
    monkeypatch.setattr(TokenChecker, "allows", lambda self, state, token: False)
    options = dict(batch_size=4, max_new_tokens=12, progress=False, decoding=decoding, engine=engine)
    stuck = generate(model, tokenizer, prompts, constraints=[NAMES] * len(prompts), constrained=True, **options)
    assert [(g.sql, g.constraint) for g in stuck] == [expected] * len(prompts)


def test_constrained_needs_the_schemas(scripted):
    from sqlora.errors import SqloraError
    from sqlora.infer.engine import generate

    model, tokenizer, prompts = scripted
    with pytest.raises(SqloraError, match="constrained"):
        generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=4, progress=False, constrained=True)


@pytest.fixture(scope="module")
def random_model(tiny_model_dir):
    return load_for_inference(tiny_model_dir)


def test_transformers_sampling_draws_from_the_constrained_distribution(random_model):
    """The logits processor leaves exactly the support and masses of constrained_distribution (what our
    engine draws from), once transformers applies the temperature, with top_p off."""
    from sqlora.config import PredictParams
    from sqlora.infer.hf import SchemaConstraintProcessor, TransformersEngine
    from sqlora.infer.plan import plan_decoding
    from tests.helpers import constrained_distribution

    model, tokenizer = random_model
    params = plan_decoding(PredictParams(decoding="sample", constrained=True, temperature=0.7, top_p=0.9))
    engine = TransformersEngine(model, tokenizer, params, seed=0, constraints=[NAMES])
    assert engine._config(1).top_p == 1.0
    processor = SchemaConstraintProcessor(engine, [NAMES], prompt_length=2)
    torch.manual_seed(0)
    for text in ["SELECT", "SELECT name FROM", "SELECT count(*) FROM singer AS T1 WHERE T1."]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        logits = torch.randn(1, len(tokenizer)) * 3
        masked = processor(torch.tensor([[0, 0, *ids]]), logits.clone())
        ours = constrained_distribution(engine.checker, state_of(NAMES, tokenizer.decode(ids)), logits[0], 0.7, 0.9)
        theirs = torch.softmax(masked[0] / 0.7, dim=-1)
        assert torch.equal(ours > 0, theirs > 0) and int((ours > 0).sum()) >= 1
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-4)


def test_our_engine_samples_from_the_constrained_distribution(random_model):
    """Our engine's constrained draws (inverse CDF over the allowed nucleus, one uniform per row and step)
    follow constrained_distribution: empirical frequencies over many rows."""
    from sqlora.config import PredictParams
    from sqlora.infer.base import Batch
    from sqlora.infer.constrained import RowConstraint
    from sqlora.infer.fast import FastEngine, StreamRow
    from sqlora.infer.plan import plan_decoding
    from tests.helpers import constrained_distribution

    model, tokenizer = random_model
    params = plan_decoding(PredictParams(decoding="sample", constrained=True, temperature=1.0, top_p=0.9))
    engine = FastEngine(model, tokenizer, params, seed=0, constraints=[NAMES])
    constraint = RowConstraint(NAMES)
    constraint.advance("SELECT")
    batch = Batch(number=0, indexes=[0], prefix=0)
    rows = [
        StreamRow(index=0, sample=k, batch=batch, generator=engine._generator(0, k), constraint=constraint, temperature=1.0, top_p=0.9)
        for k in range(1500)
    ]
    torch.manual_seed(1)
    logits = torch.randn(len(tokenizer))  # a long tail, as a fine-tuned model has
    ids = {w: tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in [" name", " age", " singer", " FROM", " weight"]}
    for rank, token in enumerate(ids.values()):
        logits[token] = 14.0 - rank * 0.7  # a few likely tokens, one of them (weight) forbidden
    expected = constrained_distribution(engine.checker, constraint.state, logits, 1.0, 0.9)
    assert float(expected[ids[" weight"]]) == 0.0 and float(expected[ids[" name"]]) > 0.1
    drawn = engine._choose(logits.expand(len(rows), -1).clone(), rows)
    counts = torch.bincount(drawn, minlength=len(tokenizer)).float() / len(rows)
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(torch.nonzero(expected).flatten().tolist())
    assert float((counts - expected).abs().max()) < 0.05  # 4 standard deviations at 1500 draws
