import random
import shutil
import sqlite3

import pytest
import torch

from sqlora.errors import SqloraError
from sqlora.infer.engine import generate, plan_batches
from sqlora.infer.loading import load_for_inference
from sqlora.infer.sql_text import extract_sql, sql_complete, sql_status
from sqlora.infer.voting import canonical_key, choose, first_running, run_candidates
from tests.helpers import save_scripted_llama, token_id


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
        ("Here is the query:\n\n```sql\nSELECT b FROM u;\n```", "SELECT b FROM u"),  # prose, then a fenced block
        ("SELECT a FROM t\n```", "SELECT a FROM t"),  # a stray closing fence ends the statement
        ("\n\nSELECT a FROM t", "SELECT a FROM t"),
        ("SELECT a FROM t GROUP BY b\nSELECT a FROM t GROUP BY b", "SELECT a FROM t GROUP BY b"),  # a second statement
        ("SELECT a FROM t\nUNION\nSELECT b FROM u", "SELECT a FROM t UNION SELECT b FROM u"),
        ("SELECT a FROM t WHERE x IN (\nSELECT b FROM u)", "SELECT a FROM t WHERE x IN ( SELECT b FROM u)"),
        ("SELECT a; ```sql SELECT b```", "SELECT a"),
    ],
)
def test_extract_sql(raw, sql):
    assert extract_sql(raw) == sql


def test_complete_statement_never_changes():
    """sql_complete(prefix) means no continuation changes the SQL: what lets a row stop there."""
    pieces = [
        "SELECT",
        " a",
        " FROM t",
        ";",
        "\n",
        "\n\n",
        "```",
        "sql",
        "```sql\n",
        "###",
        "<|",
        "Here is",
        ":",
        " (",
        ")",
        "UNION",
        "\nSELECT",
        "ED",
        " ",
        "WITH",
        "sq",
        "VALUES",
        "\n \n",
        "#",
        "<",
        "|",
        "`",
    ]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        for end in range(len(text) + 1):
            if sql_complete(text[:end]):
                assert extract_sql(text[:end]) == extract_sql(text), (text, end)
                break


def test_sql_status():
    assert sql_status("") == "empty"
    assert sql_status("SELECT a FROM t") == "ok"
    assert sql_status("The maximum is 100.") == "unparseable"
    assert sql_status("Hello") == "unparseable"  # sqlglot reads it as a column: not a query
    assert sql_status("SELECT a FROM") == "unparseable"


# --- a scripted model: real Llama, real generation code, known outputs ---------------------------

# Each trigger (the prompt's last token) starts a chain of single tokens; a chain ends in a token that
# repeats forever, or in EOS ("<eos>").
CHAINS = {
    " alpha": ["SELECT", " name", " FROM", " singer", ";", " Then"],  # ends at ";"
    " beta": ["select", " age", " from", " head", "\n\n", " More"],  # ends at a blank line
    " gamma": ["```", "sql", "\n", "Select", " id", " ```", " Done"],  # a fenced block, closed
    " delta": [" SELECT", " *", " concert", "<eos>"],  # EOS
    " epsilon": [" count"],  # prose for ever: stops at max_new_tokens
    " theta": ["Here", " is", " \n\n", " code", "###", " Note"],  # prose: a blank line is not the end, "###" is
}


@pytest.fixture(scope="module")
def scripted_dir(tiny_model_dir, tmp_path_factory):
    """A Llama whose next token depends on the last token only, saved as a plain checkpoint folder."""
    from sqlora.model.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    transitions = {}
    for trigger, chain in CHAINS.items():
        ids = [token_id(tokenizer, trigger)] + [token_id(tokenizer, t) for t in chain]
        for a, b in zip(ids, ids[1:] + ids[-1:]):
            if a != tokenizer.eos_token_id:
                assert transitions.setdefault(a, b) == b, "a token with two successors"
    out = tmp_path_factory.mktemp("scripted") / "model"
    return save_scripted_llama(tiny_model_dir, out, {a: [b] for a, b in transitions.items()})


SCHEMA = "Schema: " + " ".join(f"table{i} has columns a, b, c." for i in range(30))


def scripted_prompts():
    words = ["one", "two", "three words here", "four", "a much longer question than the others", "six"]
    return [f"{SCHEMA}\nQuestion {w}:{t}" for w in words for t in CHAINS]


def full_generation(model, tokenizer, prompt, max_new_tokens):
    """transformers' generate() alone, run to EOS or max_new_tokens: the seed's loop."""
    ids = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_stop_at_sql_end_keeps_the_sql(scripted_dir):
    model, tokenizer = load_for_inference(scripted_dir)  # a plain checkpoint folder loads standalone
    prompts = scripted_prompts()
    generations = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=20, progress=False)
    for prompt, g in zip(prompts, generations):
        assert g.sql == extract_sql(full_generation(model, tokenizer, prompt, 20))
    by_trigger = {p.rsplit(":", 1)[1]: g for p, g in zip(prompts, generations)}
    assert by_trigger[" alpha"].sql == "SELECT name FROM singer" and by_trigger[" alpha"].stop == "sql_end"
    assert by_trigger[" alpha"].new_tokens == 5  # stopped at ";", not 20 tokens later
    assert by_trigger[" beta"].sql == "select age from head" and by_trigger[" beta"].new_tokens == 5
    assert by_trigger[" gamma"].sql == "Select id" and by_trigger[" gamma"].new_tokens == 6
    assert by_trigger[" delta"].stop == "eos" and by_trigger[" delta"].new_tokens == 4
    assert by_trigger[" epsilon"].stop == "max_new_tokens" and by_trigger[" epsilon"].hit_max_new_tokens
    assert by_trigger[" epsilon"].new_tokens == 20 and by_trigger[" epsilon"].status == "unparseable"
    assert by_trigger[" theta"].sql == "Here is" and by_trigger[" theta"].new_tokens == 5  # not at the blank line
    assert not by_trigger[" alpha"].hit_max_new_tokens and by_trigger[" alpha"].status == "ok"
    assert all(g.decoding == "greedy" and g.batch_seconds > 0 and g.seconds > 0 for g in generations)


@pytest.mark.parametrize("decoding", [{"decoding": "beam", "num_beams": 3}, {"decoding": "sample", "temperature": 0.7}])
def test_beam_and_sample_run(scripted_dir, decoding):
    model, tokenizer = load_for_inference(scripted_dir)
    prompts = scripted_prompts()[:12]
    greedy = generate(model, tokenizer, prompts, 4, 20, progress=False)
    other = generate(model, tokenizer, prompts, 4, 20, progress=False, **decoding)
    assert [g.sql for g in other] == [g.sql for g in greedy]  # the scripted model leaves no choice
    assert {g.decoding for g in other} == {decoding["decoding"]}
    assert [g.stop for g in other] == [g.stop for g in greedy]


def test_self_consistency_candidates(scripted_dir):
    model, tokenizer = load_for_inference(scripted_dir)
    prompts = scripted_prompts()[:6]
    generations = generate(model, tokenizer, prompts, 8, 20, progress=False, decoding="self_consistency", num_samples=3)
    assert all(len(g.candidates) == 3 for g in generations)
    assert generations[0].candidates[0].sql == "SELECT name FROM singer"


@pytest.fixture(scope="module")
def chaotic_model(chaotic_dir):
    """conftest's chaotic model, loaded in fp32."""
    return load_for_inference(chaotic_dir, dtype="float32")


def test_batched_greedy_equals_one_at_a_time(chaotic_model):
    """Shared prefixes, left padding in the middle, rows leaving: the same tokens as generate() alone."""
    model, tokenizer = chaotic_model
    prompts = [f"{SCHEMA}\nQuestion {w}?\n###Response: " for w in ["one", "two two", "three three three", "4", "five", "6 6"]]
    prompts += ["Another schema entirely. Question?", "Another schema entirely, longer. Question two?"]
    generations = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=16, progress=False)
    for prompt, g in zip(prompts, generations):
        assert full_generation(model, tokenizer, prompt, 16).startswith(g.raw)
        assert g.stop != "max_new_tokens" or g.new_tokens == 16


def test_execution_guided_candidates_are_greedy_then_samples_on_our_engine(chaotic_model):
    """execution_guided on our engine: each question's first candidate is its greedy answer, the others
    are the samples self_consistency draws for it (the same random streams), all from one prefill."""
    model, tokenizer = chaotic_model
    prompts = [f"{SCHEMA}\nQuestion {w}?\n###Response: " for w in ["one", "two two", "three three three", "4"]]
    settings = {"num_samples": 3, "temperature": 1.0, "seed": 5}
    greedy = generate(model, tokenizer, prompts, 4, 12, progress=False)
    guided = generate(model, tokenizer, prompts, 4, 12, progress=False, decoding="execution_guided", **settings)
    voted = generate(model, tokenizer, prompts, 4, 12, progress=False, decoding="self_consistency", **settings)
    assert {c.engine for g in guided for c in g.candidates} == {"sqlora"}
    for g, e, v in zip(greedy, guided, voted):
        assert [c.raw for c in e.candidates] == [g.raw] + [c.raw for c in v.candidates[1:]]
    assert any(len({c.raw for c in e.candidates}) > 1 for e in guided)  # the samples are not all greedy


def test_resumed_batches_equal_an_uninterrupted_run(chaotic_model):
    from sqlora.config import PredictParams
    from sqlora.infer.engine import iter_generate
    from sqlora.infer.plan import plan_decoding

    model, tokenizer = chaotic_model
    prompts = [f"{SCHEMA}\nQuestion {i}?" for i in range(7)] + [f"Short {i}" for i in range(3)]
    params = plan_decoding(PredictParams(batch_size=3, max_new_tokens=8, decoding="sample"))
    full = {}
    batches = list(iter_generate(model, tokenizer, prompts, params, seed=1, progress=False))
    for batch in batches:
        full.update(batch)
    done = set(batches[0]) | set(batches[2])
    resumed = {}
    for batch in iter_generate(model, tokenizer, prompts, params, seed=1, skip=done, progress=False):
        assert not set(batch) & done
        resumed.update(batch)
    assert set(resumed) | done == set(range(len(prompts)))
    assert all(resumed[i].raw == full[i].raw for i in resumed)


def test_plan_batches_groups_shared_prefixes():
    a = [[1, 2, 3, 4, 5, 6, 7, 8, i] for i in range(10, 16)]  # one schema
    b = [[9, 9, 9, 9, 9, 9, 9, 9, i, i] for i in range(20, 23)]  # another
    c = [[7, 7, 7, 7, 7, 7, 7, 7, 7, 5]]  # a third, one question
    batches = plan_batches(a + b + c, 4)
    assert sorted(i for batch in batches for i in batch.indexes) == list(range(10))
    for batch in batches:
        assert len({tuple((a + b + c)[i][: batch.prefix]) for i in batch.indexes}) == 1
    assert [(len(batch.indexes), batch.prefix) for batch in batches] == [(4, 8), (2, 8), (1, 9), (3, 8)]
    # Batches that run alone pool the small group tails (sharing less) instead of running tiny batches.
    pooled = plan_batches(a + b + c, 16, pool_small=True)
    assert [(len(batch.indexes), batch.prefix) for batch in pooled] == [(6, 8), (4, 0)]


def test_merged_export_loads_like_the_adapter(tiny_model_dir, tmp_path):
    """An exported folder (no sqlora_model.json) loads as a standalone model and writes what base + adapter write."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sqlora.io import write_json
    from sqlora.model.export import export_model

    finetuned = tmp_path / "finetuned"
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    peft_model.save_pretrained(finetuned)
    write_json(finetuned / "sqlora_model.json", {"method": "lora", "base": str(tiny_model_dir)})
    export_model(finetuned, tiny_model_dir, tmp_path / "exported", dtype="float32")

    prompts = [f"{SCHEMA}\nQuestion {i}?" for i in range(3)]
    adapter = generate(*load_for_inference(finetuned, tiny_model_dir), prompts, 4, 8, progress=False)
    merged = generate(*load_for_inference(tmp_path / "exported"), prompts, 4, 8, progress=False)
    assert [g.raw for g in merged] == [g.raw for g in adapter]

    plain = tmp_path / "plain"
    shutil.copytree(tmp_path / "exported", plain)
    (plain / "sqlora_export.json").unlink()
    assert generate(*load_for_inference(plain), prompts, 4, 8, progress=False)[0].raw == merged[0].raw


def test_not_a_model_folder(tmp_path):
    with pytest.raises(SqloraError, match="no sqlora_model.json"):
        load_for_inference(tmp_path)


def test_prompt_longer_than_the_context(tiny_model_dir):
    model, tokenizer = load_for_inference(tiny_model_dir)  # max_position_embeddings 1024
    prompts = ["short question", "word " * 1020]
    with pytest.raises(SqloraError) as error:
        generate(model, tokenizer, prompts, 4, 16, progress=False)
    message = str(error.value)
    assert message.startswith("prompt #1: ") and "context of 1024 tokens (max_position_embeddings)" in message
    assert "\n" not in message


def test_chat_template_without_one(tiny_model_dir):
    model, tokenizer = load_for_inference(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(SqloraError, match="has no chat template") as error:
        generate(model, tokenizer, ["a question"], 4, 8, progress=False, chat_template=True)
    assert "\n" not in str(error.value)


# --- execution-guided voting ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def votes_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("votes") / "v.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "x"), (2, "y"), (3, "y")])
    return path


def test_vote_picks_the_majority_result(votes_db):
    candidates = [
        "SELECT b FROM t WHERE a = 1",  # x
        "SELECT a, b FROM t",
        "SELECT b, a FROM t ORDER BY a DESC",  # the same rows, columns and order permuted
        "SELECT nothing FROM t",  # does not run
        "SELECT a, b FROM t WHERE a > 0",
    ]
    [result] = [choose(k) for k in run_candidates([candidates], [votes_db], timeout_s=5, workers=2)]
    assert result.chosen == 1 and result.votes == 3
    assert result.keys[3] is None and result.keys[1] == result.keys[2] == result.keys[4] != result.keys[0]


def test_vote_ties_and_failures(votes_db):
    tie = ["SELECT a FROM t WHERE a = 1", "SELECT a FROM t WHERE a = 2", "SELECT a FROM t WHERE a = 2", "SELECT 1"]
    none_run = ["SELECT x FROM nowhere", "DROP TABLE t", ""]
    results = [choose(k) for k in run_candidates([tie, none_run], [votes_db, votes_db], timeout_s=5, workers=2)]
    assert (results[0].chosen, results[0].votes) == (0, 2)  # {0, 3} and {1, 2}: the group of the earliest
    assert (results[1].chosen, results[1].votes) == (0, 0) and results[1].keys == [None, None, None]


def test_first_running():
    """execution_guided: the first candidate that runs; with require_rows the first with rows, else the
    first that runs; none runs: the first, with 0 votes."""
    rows, empty = canonical_key([(1,)]), canonical_key([])
    assert first_running([None, empty, rows]).chosen == 1
    assert first_running([None, empty, rows], require_rows=True).chosen == 2
    assert first_running([None, empty, None], require_rows=True).chosen == 1
    assert first_running([None, None]).chosen == 0 and first_running([None, None]).votes == 0
    assert first_running([rows]).votes == 1
    # Candidates the constraint was released for come after the others, whether they run or not.
    assert first_running([rows, empty, rows], released=[0]).chosen == 1
    assert first_running([rows, None], released=[0]).chosen == 0  # none of the others runs
    assert first_running([None, None], released=[0]).chosen == 1  # none runs: the first held one


def test_choose_and_canonical_key():
    assert choose(["k1", "k2", "k2", None]).chosen == 1
    assert choose(["k1", None, "k2", "k2", "k1"]).chosen == 0
    assert choose([None, None]).chosen == 0
    assert canonical_key([]) != canonical_key([(None,)])  # no rows is not one row of NULL
    assert canonical_key([(1, "a"), (2, "b")]) == canonical_key([("b", 2), ("a", 1)])
    assert canonical_key([(1,), (1,)]) != canonical_key([(1,)])  # a bag: duplicates count
    assert canonical_key([(1, True)]) == canonical_key([(1.0, 1)])  # equal numbers, as EX compares them
    assert canonical_key([("1",)]) != canonical_key([(1,)])
    # columns with the same values in another alignment: equal only up to a real permutation
    assert canonical_key([(1, 2), (2, 1), (1, 1)]) == canonical_key([(2, 1), (1, 2), (1, 1)])
    assert canonical_key([(1, 2), (2, 1)]) != canonical_key([(1, 1), (2, 2)])


def test_canonical_key_groups_exactly_what_ex_calls_equal():
    """Property: for random results (columns permuted, rows shuffled, values swapped for equal ones of
    another type), two keys are equal exactly when results_match (without ordering) says so."""
    import random

    from sqlora.evaluate.execution import results_match

    rng = random.Random(0)
    pool = [0, 1, 1.0, True, 2, 2.0, 2.5, "1", "a", None, b"a"]
    equal_pairs = unequal_pairs = 0
    for _ in range(3000):
        width, height = rng.randint(1, 4), rng.randint(0, 4)
        a = [tuple(rng.choice(pool) for _ in range(width)) for _ in range(height)]
        if rng.random() < 0.5:  # a result EX may call equal: permuted, shuffled, equal values retyped
            order = rng.sample(range(width), width)
            swap = {1: [1, 1.0, True], 2: [2, 2.0], 0: [0, 0.0, False]}
            b = [tuple(rng.choice(swap.get(v, [v])) if not isinstance(v, (str, bytes)) and v is not None else v
                       for v in (row[i] for i in order)) for row in a]  # fmt: skip
            rng.shuffle(b)
            if rng.random() < 0.3 and b:  # and sometimes changed in one cell
                row = list(b[0])
                row[0] = rng.choice(pool)
                b[0] = tuple(row)
        else:
            b = [tuple(rng.choice(pool) for _ in range(width)) for _ in range(rng.randint(0, 4))]
        same = results_match(b, a, order_matters=False)
        assert (canonical_key(a) == canonical_key(b)) == same, (a, b)
        equal_pairs += same
        unequal_pairs += not same
    assert equal_pairs > 500 and unequal_pairs > 500


# --- sampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.95), (1.0, 1.0), (0.3, 0.5), (1.5, 0.99)])
def test_sampling_distribution_is_transformers_temperature_and_top_p(temperature, top_p):
    """What our engine samples from is what transformers' TemperatureLogitsWarper + TopPLogitsWarper give,
    including a nucleus beyond the first NUCLEUS_K tokens."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from tests.helpers import sampling_distribution

    torch.manual_seed(0)
    logits = torch.cat([torch.randn(3, 1000) * 4, torch.randn(1, 1000) * 0.01])  # peaked rows, and a flat one
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    torch.testing.assert_close(sampling_distribution(logits, temperature, top_p), torch.softmax(scores, dim=-1), atol=1e-6, rtol=1e-5)


def test_sampled_tokens_follow_the_distribution():
    """Draws through the engine's inverse CDF, one random stream per row: frequencies within 4 standard
    deviations of the probabilities, no draw outside the nucleus."""
    from sqlora.config import PredictParams
    from sqlora.infer.fast import FastEngine
    from sqlora.infer.plan import plan_decoding
    from tests.helpers import sampling_distribution

    logits = torch.tensor([[3.0, 2.5, 2.0, 1.0, 0.0, -1.0, -5.0, -9.0]])
    engine = FastEngine.__new__(FastEngine)  # only _choose and its parameters, no model
    engine.plan, engine.dev, engine.seed = plan_decoding(PredictParams(decoding="sample", temperature=0.8, top_p=0.9)), "cpu", 0
    draws = 4000
    rows = [
        type("R", (), {"generator": engine._generator(i, 0), "constraint": None, "temperature": 0.8, "top_p": 0.9})() for i in range(draws)
    ]
    tokens = engine._choose(logits.expand(draws, -1), rows)
    probs = sampling_distribution(logits, 0.8, 0.9)[0]
    counts = torch.bincount(tokens, minlength=8).float()
    assert counts[probs == 0].sum() == 0
    spread = (draws * probs * (1 - probs)).sqrt()
    assert ((counts - draws * probs).abs() <= 4 * spread + 1).all(), (counts, draws * probs)


def test_a_transformers_without_our_engines_internals_gets_its_own_generate(tiny_model_dir, monkeypatch):
    """pyproject.toml lets a newer transformers install; where it has moved the internals our engine imports,
    prediction runs on transformers' generate() and says why, instead of failing."""
    import sys

    import transformers

    from sqlora.config import PredictParams
    from sqlora.infer.engine import select_engine
    from sqlora.infer.plan import plan_decoding

    model, tokenizer = load_for_inference(tiny_model_dir)
    monkeypatch.setitem(sys.modules, "sqlora.infer.fast", None)  # its import now raises ImportError
    choice = select_engine(model, tokenizer, plan_decoding(PredictParams()))
    assert choice.name == "transformers" and f"transformers {transformers.__version__}'s internals" in choice.reason
    [g] = generate(model, tokenizer, ["SELECT"], 1, 4, progress=False)
    assert g.engine == "transformers" and g.new_tokens <= 4


def test_sql_nested_past_the_parsers_depth_is_unparseable_not_a_crash():
    """A generated query deep enough to exhaust sqlglot's recursion (met on Spider dev) is one bad answer."""
    from sqlora.infer.sql_text import sql_status

    assert sql_status("SELECT " + "(" * 3000 + "1" + ")" * 3000) == "unparseable"
