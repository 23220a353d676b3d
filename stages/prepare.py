"""Dataset in its official layout → data/prepared/{train,validation,dev}.jsonl, meta.json, metrics/data.json and the
histogram data reports/plots/prompt_tokens.csv."""

from pathlib import Path

from sqlora.config import load_params
from sqlora.data.prepare import prepare_split
from sqlora.data.records import record_dicts
from sqlora.errors import exit_on_error
from sqlora.io import write_json, write_jsonl, write_text
from sqlora.model.loader import load_tokenizer

OUT = Path("data/prepared")
PROMPT_TOKENS_PLOT = "reports/plots/prompt_tokens.csv"


@exit_on_error
def main() -> None:
    params = load_params()
    tokenizer = load_tokenizer("models/base")  # token lengths are the model's: the budget and the statistics
    prepared, stats = {}, {}
    for name, split, portion, limit, shuffle, reserve in [
        # train: a seeded random subset of the questions on the databases not held out, each record fitting
        # with its SQL; validation: every question on the held-out train databases (data.validation), and
        # dev: the first N in official order, each prompt leaving room to generate.
        ("train", "train", "train", params.data.max_train_examples, True, None),
        ("validation", "train", "validation", 0, False, params.predict.max_new_tokens),
        ("dev", "dev", "all", params.data.max_dev_examples, False, params.predict.max_new_tokens),
    ]:
        data, fitted, stats[name] = prepare_split(
            split,
            params.data,
            params.prompt,
            tokenizer=tokenizer,
            max_length=params.train.max_length,
            reserve=reserve,
            limit=limit,
            shuffle=shuffle,
            seed=params.seed,
            work_dir=str(OUT),
            portion=portion,
        )
        prepared[name] = (data, fitted)
        for problem in data.problems if name != "validation" else ():  # validation's are train's, printed once
            print(f"prepare: skipped {problem}")
    # Written only once every split has been read without error (validation.jsonl empty without data.validation).
    for name, (_, fitted) in prepared.items():
        write_jsonl(OUT / f"{name}.jsonl", record_dicts(fitted.records))
        print(f"prepare: {len(fitted.records)} {name} records -> {OUT / f'{name}.jsonl'}  {stats[name]}")
    dev = prepared["dev"][0]
    validation = prepared["validation"][0]
    write_json(
        OUT / "meta.json",
        {
            "dataset": params.data.dataset,
            "database_dir": str(dev.database_dir),
            "tables_json": str(dev.tables_json),
            "validation_database_dir": str(validation.database_dir),
        },
    )
    write_json("metrics/data.json", stats)
    # `dvc plots` data: each kept record's prompt length, the very counts behind prompt_tokens above.
    write_text(
        PROMPT_TOKENS_PLOT,
        "split,tokens\n" + "".join(f"{name},{n}\n" for name, (_, fitted) in prepared.items() for n in fitted.prompt_tokens),
    )


if __name__ == "__main__":
    main()
