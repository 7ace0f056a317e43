"""`ue-dpo data`: RLHF-V / RLAIF-V in the schemas of their public copies -> LLaMA-Factory ranking datasets."""

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from public_preference_files import (
    BLUE_PNG,
    GREEN_JPEG,
    RED_JPEG,
    RLAIF_V_BAD_ROWS,
    RLHF_V_BAD_ROWS,
    write_llamafactory_rlhf_v,
    write_rlaif_v,
    write_rlhf_v,
)
from ue_dpo.datasets import BadSampleError, SourceError, Subset, convert
from ue_dpo.synthetic.tiny_models import LLAVA_IMAGE_SIZE, VISION_PATCH_SIZE

UE_DPO_CLI = Path(sys.executable).with_name("ue-dpo")
ANSWER_END = {"llava": "</s>", "qwen2_vl": "<|im_end|>\n"}
# The prompt around the image's tokens, by template: LLaMA-Factory's system prompt and user turn around
# "<image>\n" + question (LLaVA-1.5's own "USER: <image>\n... ASSISTANT:"; Qwen2-VL's image in vision markers)
PROMPT_AROUND_IMAGE = {
    "llava": (
        (
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: "
        ),
        "\n{question} ASSISTANT:",
    ),
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>",
        "<|vision_end|>\n{question}<|im_end|>\n<|im_start|>assistant\n",
    ),
}


def image_path(dataset: str, data: bytes, extension: str) -> str:
    digest = hashlib.sha256(data).hexdigest()[:32]
    return f"{dataset}_images/{digest[:2]}/{digest}{extension}"


def pair(row, question, chosen, rejected, image):
    # RLHF-V's and RLAIF-V's own training code build the user turn as "<image>\n" + question
    return {
        "messages": [{"role": "user", "content": f"<image>\n{question}"}],
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
        "row": row,
        "images": [image],
    }


RED_RLHF_V = image_path("rlhf_v", RED_JPEG, ".jpg")
BLUE_RLHF_V = image_path("rlhf_v", BLUE_PNG, ".png")
EXPECTED_RLHF_V = [
    pair(0, "Describe the image.", "A red square.", "A red square next to a dog.", RED_RLHF_V),
    pair(1, "What colour dominates?", "Red.", "Blue, with a cat.", RED_RLHF_V),
    pair(5, "Is the picture blue?", "Yes, it is plain blue.", "No, it shows a car.", BLUE_RLHF_V),
]
EXPECTED_RLAIF_V = [
    pair(
        0,
        "How many objects are there?",
        "One green square.",
        "Three green squares and a ball.",
        image_path("rlaif_v", GREEN_JPEG, ".jpg"),
    ),
    pair(2, "Which colour is the square?", "It is red.", "It is green.", image_path("rlaif_v", RED_JPEG, ".jpg")),
]
SHAREGPT_RANKING_ENTRY = {
    "formatting": "sharegpt",
    "ranking": True,
    "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("public_sources")
    return {
        "rlhf_v": write_rlhf_v(root / "RLHF-V-Dataset"),
        "rlaif_v": write_rlaif_v(root / "RLAIF-V-Dataset"),
        "llamafactory_rlhf_v": write_llamafactory_rlhf_v(root / "llamafactory-RLHF-V"),
    }


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {file.relative_to(folder).as_posix(): file.read_bytes() for file in folder.rglob("*") if file.is_file()}


def test_rlhf_v_rows_become_sharegpt_ranking_records_with_their_original_image_bytes(sources, tmp_path):
    report = convert("rlhf_v", tmp_path, source=str(sources["rlhf_v"]))

    assert json.loads((tmp_path / "rlhf_v.json").read_text()) == EXPECTED_RLHF_V
    assert (tmp_path / RED_RLHF_V).read_bytes() == RED_JPEG
    assert (tmp_path / BLUE_RLHF_V).read_bytes() == BLUE_PNG
    assert sorted(folder_contents(tmp_path / "rlhf_v_images")) == sorted(
        path.removeprefix("rlhf_v_images/") for path in (RED_RLHF_V, BLUE_RLHF_V)
    )
    assert json.loads((tmp_path / "dataset_info.json").read_text()) == {
        "rlhf_v": {"file_name": "rlhf_v.json", **SHAREGPT_RANKING_ENTRY}
    }
    assert (report.pairs, report.images, report.skipped) == (3, 2, 3)


@pytest.mark.parametrize("dataset, bad_rows", [("rlhf_v", RLHF_V_BAD_ROWS), ("rlaif_v", RLAIF_V_BAD_ROWS)])
def test_bad_samples_are_skipped_by_default_named_in_the_log_and_listed(dataset, bad_rows, sources, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ue_dpo.datasets"):
        report = convert(dataset, tmp_path, source=str(sources[dataset]))

    listed = [json.loads(line) for line in (tmp_path / f"{dataset}_skipped.jsonl").read_text().splitlines()]
    assert [(entry["row"], entry["idx"]) for entry in listed] == [(row, idx) for row, idx, _ in bad_rows]
    for entry, (_, _, reason) in zip(listed, bad_rows, strict=True):
        assert entry["reason"].startswith(reason)
    assert [record.getMessage() for record in caplog.records] == [
        f"skipping {dataset} sample at row {entry['row']} (idx {entry['idx']!r}): {entry['reason']}" for entry in listed
    ]
    assert report.skipped == len(bad_rows)
    expected = {"rlhf_v": EXPECTED_RLHF_V, "rlaif_v": EXPECTED_RLAIF_V}[dataset]
    assert json.loads((tmp_path / f"{dataset}.json").read_text()) == expected


@pytest.mark.parametrize("layout", ["save_to_disk", "arrow_files"])
def test_local_arrow_folders_convert_like_the_parquet_files(layout, sources, tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.load_dataset("parquet", data_files=str(sources["rlhf_v"] / "*.parquet"), split="train").save_to_disk(saved)
    source = saved
    if layout == "arrow_files":  # e.g. copied out of a `datasets` cache: no state.json
        source = tmp_path / "arrow"
        source.mkdir()
        for file in saved.glob("*.arrow"):
            (source / file.name).write_bytes(file.read_bytes())
    convert("rlhf_v", tmp_path / "out", source=str(source))
    assert json.loads((tmp_path / "out" / "rlhf_v.json").read_text()) == EXPECTED_RLHF_V


def test_on_bad_sample_error_stops_at_the_first_bad_sample_without_writing_records(sources, tmp_path):
    with pytest.raises(
        BadSampleError,
        match=r"rlhf_v sample at row 2 \(idx 102\): its image bytes are in no "
        r"format PIL can read\. .*--on-bad-sample skip",
    ):
        convert("rlhf_v", tmp_path, source=str(sources["rlhf_v"]), on_bad_sample="error")
    assert not (tmp_path / "rlhf_v.json").exists()
    assert not (tmp_path / "dataset_info.json").exists()


def test_both_public_rlhf_v_copies_convert_to_identical_records(sources, tmp_path):
    convert("rlhf_v", tmp_path / "openbmb", source=str(sources["rlhf_v"]))
    report = convert("rlhf_v", tmp_path / "llamafactory", source=str(sources["llamafactory_rlhf_v"]))

    assert json.loads((tmp_path / "llamafactory" / "rlhf_v.json").read_text()) == EXPECTED_RLHF_V
    assert folder_contents(tmp_path / "llamafactory" / "rlhf_v_images") == folder_contents(
        tmp_path / "openbmb" / "rlhf_v_images"
    )
    skipped = [
        json.loads(line) for line in (tmp_path / "llamafactory" / "rlhf_v_skipped.jsonl").read_text().splitlines()
    ]
    assert [(entry["row"], entry["idx"], entry["reason"][:20]) for entry in skipped] == [
        (row, None, reason[:20]) for row, _, reason in RLHF_V_BAD_ROWS
    ]  # this copy has no idx column
    assert json.loads(report.provenance_path.read_text())["schema"] == "llamafactory/RLHF-V"


def test_first_n_counts_source_rows_so_bad_rows_inside_the_window_are_skipped_not_replaced(sources, tmp_path):
    report = convert("rlaif_v", tmp_path, source=str(sources["rlaif_v"]), subset=Subset("first", 2))
    assert json.loads((tmp_path / "rlaif_v.json").read_text()) == EXPECTED_RLAIF_V[:1]  # row 1 is bad, row 2 not read
    assert (report.pairs, report.skipped) == (1, 1)
    provenance = json.loads(report.provenance_path.read_text())
    assert (provenance["subset"], provenance["rows_read"]) == ({"kind": "first", "rows": 2}, 2)
    with pytest.raises(SourceError, match=r"--first 6 asks for more rows than .* holds \(5\)"):
        convert("rlaif_v", tmp_path / "too_many", source=str(sources["rlaif_v"]), subset=Subset("first", 6))


@pytest.mark.parametrize("seed", [0, 7])
def test_random_subset_is_the_seeded_ranking_of_source_row_indices(seed, sources, tmp_path):
    # the rule, written out: the 3 indices of the 5 rows whose sha256("seed:index") sort first
    ranked = sorted(range(5), key=lambda index: hashlib.sha256(f"{seed}:{index}".encode()).digest())
    chosen_rows = sorted(ranked[:3])
    report = convert("rlaif_v", tmp_path, source=str(sources["rlaif_v"]), subset=Subset("random", 3, seed))

    good = {record["row"]: record for record in EXPECTED_RLAIF_V}
    assert json.loads((tmp_path / "rlaif_v.json").read_text()) == [good[row] for row in chosen_rows if row in good]
    listed = [json.loads(line)["row"] for line in (tmp_path / "rlaif_v_skipped.jsonl").read_text().splitlines()]
    assert listed == [row for row in chosen_rows if row not in good]
    provenance = json.loads(report.provenance_path.read_text())
    assert provenance["subset"] == {"kind": "random", "rows": 3, "seed": seed}
    assert (provenance["rows_read"], provenance["pairs"] + provenance["skipped"]) == (5, 3)


def test_the_dataset_folder_records_the_digests_of_the_files_read_and_the_rows(sources, tmp_path):
    report = convert("rlaif_v", tmp_path, source=str(sources["rlaif_v"]))
    assert json.loads((tmp_path / "rlaif_v_source.json").read_text()) == {
        "dataset": "rlaif_v",
        "source": str(sources["rlaif_v"]),
        "schema": "openbmb/RLAIF-V-Dataset",
        "hub": None,
        "files": {
            name: hashlib.sha256((sources["rlaif_v"] / name).read_bytes()).hexdigest()
            for name in ("RLAIF-V-Dataset_000.parquet", "RLAIF-V-Dataset_001.parquet")
        },
        "subset": {"kind": "all"},
        "rows_read": 5,
        "pairs": 2,
        "skipped": 3,
    }
    assert report.provenance_path == tmp_path / "rlaif_v_source.json"


def fake_hub_cache(root: Path, repo: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
    """A Hugging Face hub cache (huggingface_hub's documented layout) holding `snapshots` (commit -> folder of
    files) of the dataset `repo`, with branch or tag `refs` (name -> commit)."""
    repo_dir = root / f"datasets--{repo.replace('/', '--')}"
    for commit, files in snapshots.items():
        (repo_dir / "snapshots" / commit).mkdir(parents=True)
        for file in files.iterdir():
            (repo_dir / "snapshots" / commit / file.name).write_bytes(file.read_bytes())
    (repo_dir / "refs").mkdir(parents=True)
    for name, commit in refs.items():
        (repo_dir / "refs" / name).write_text(commit)
    return repo_dir


def test_hub_downloads_record_the_revision_and_a_folder_of_several_snapshots_is_refused(sources, tmp_path):
    old, new = "1" * 40, "2" * 40
    cache = tmp_path / "hub"
    repo_dir = fake_hub_cache(
        cache, "openbmb/RLHF-V-Dataset", {old: sources["rlhf_v"], new: sources["rlhf_v"]}, {"main": new, "v1": old}
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(UE_DPO_CLI), "data", "rlhf_v", "--out", str(tmp_path / "data"), "--revision", "v1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    provenance = json.loads((tmp_path / "data" / "rlhf_v_source.json").read_text())
    assert provenance["hub"] == {"repo": "openbmb/RLHF-V-Dataset", "revision": "v1", "commit": old}
    assert provenance["files"] == {
        "RLHF-V-Dataset.parquet": hashlib.sha256(
            (sources["rlhf_v"] / "RLHF-V-Dataset.parquet").read_bytes()
        ).hexdigest()
    }
    assert json.loads((tmp_path / "data" / "rlhf_v.json").read_text()) == EXPECTED_RLHF_V
    done = subprocess.run(
        [str(UE_DPO_CLI), "data", "rlhf_v", "--out", str(tmp_path / "latest")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "latest" / "rlhf_v_source.json").read_text())["hub"] == {
        "repo": "openbmb/RLHF-V-Dataset",
        "revision": "main",
        "commit": new,
    }

    with pytest.raises(SourceError, match=r"holds 2 copies of RLHF-V-Dataset.parquet .*--revision"):
        convert("rlhf_v", tmp_path / "out", source=str(repo_dir))
    with pytest.raises(SourceError, match=r"--revision v1 applies to a hub download"):
        convert("rlhf_v", tmp_path / "out", source=str(repo_dir / "snapshots" / old), revision="v1")


def test_reruns_rewrite_identical_files_and_keep_the_other_datasets_entries(sources, tmp_path):
    convert("rlaif_v", tmp_path, source=str(sources["rlaif_v"]))
    convert("rlhf_v", tmp_path, source=str(sources["rlhf_v"]))
    first = folder_contents(tmp_path)
    convert("rlhf_v", tmp_path, source=str(sources["rlhf_v"]))
    assert folder_contents(tmp_path) == first

    convert("rlhf_v", tmp_path, source=str(sources["rlhf_v"]), subset=Subset("first", 1))
    assert json.loads((tmp_path / "rlhf_v.json").read_text()) == EXPECTED_RLHF_V[:1]
    assert sorted(folder_contents(tmp_path / "rlhf_v_images")) == [RED_RLHF_V.removeprefix("rlhf_v_images/")]
    assert sorted(json.loads((tmp_path / "dataset_info.json").read_text())) == ["rlaif_v", "rlhf_v"]
    assert {name: data for name, data in folder_contents(tmp_path).items() if name.startswith("rlaif_v")} == {
        name: data for name, data in first.items() if name.startswith("rlaif_v")
    }


def test_sources_that_are_not_the_named_dataset_are_refused(sources, tmp_path):
    with pytest.raises(SourceError) as refused:
        convert("rlhf_v", tmp_path / "out", source=str(sources["rlaif_v"]))
    assert str(refused.value) == (
        f"{sources['rlaif_v']} has columns ds_name, image, question, chosen, rejected, origin_dataset, origin_split, "
        "idx, image_path, which are none of the schemas rlhf_v is read in: openbmb/RLHF-V-Dataset (columns image, "
        "text, idx); llamafactory/RLHF-V (columns conversations, chosen, rejected, images)"
    )
    with pytest.raises(SourceError, match=r"has columns conversations, chosen, rejected, images, which are none"):
        convert("rlaif_v", tmp_path / "out", source=str(sources["llamafactory_rlhf_v"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SourceError, match="--source .*empty holds no .parquet or .arrow files; download openbmb/RLAIF-V-Dataset"
    ):
        convert("rlaif_v", tmp_path / "out", source=str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="--source '.*missing' is neither an existing folder nor a hub dataset id"):
        convert("rlaif_v", tmp_path / "out", source=str(tmp_path / "missing"))


def write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.table(columns), path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("zero bytes", "is not a readable parquet file (Parquet file size is 0 bytes)"),
        ("no rows", "is a parquet file with no rows (columns image, text, idx)"),
        ("no columns", "is a parquet file with no columns"),
    ],
)
def test_an_empty_or_columnless_parquet_file_is_named_with_the_fix(kind, message, sources, tmp_path):
    """Issue 24 item 6: these crashed with Arrow's and datasets' tracebacks."""
    import pyarrow

    folder = tmp_path / "source"
    for good in sources["rlhf_v"].rglob("*.parquet"):  # the bad file among good ones, as a broken shard
        (folder / good.relative_to(sources["rlhf_v"])).parent.mkdir(parents=True, exist_ok=True)
        (folder / good.relative_to(sources["rlhf_v"])).write_bytes(good.read_bytes())
    bad = folder / "zz-broken.parquet"
    if kind == "zero bytes":
        bad.write_bytes(b"")
    elif kind == "no rows":
        image = pyarrow.struct([("bytes", pyarrow.binary()), ("path", pyarrow.string())])
        write_parquet(
            bad,
            {
                "image": pyarrow.array([], image),
                "text": pyarrow.array([], pyarrow.string()),
                "idx": pyarrow.array([], pyarrow.int64()),
            },
        )
    else:
        write_parquet(bad, {})
    fix = "; download openbmb/RLHF-V-Dataset again, or remove the file from the folder"
    with pytest.raises(SourceError) as refused:
        convert("rlhf_v", tmp_path / "out", source=str(folder))
    assert str(refused.value) == f"{bad} {message}{fix}"
    assert not (tmp_path / "out").exists()

    done = subprocess.run(
        [str(UE_DPO_CLI), "data", "rlhf_v", "--out", str(tmp_path / "out"), "--source", str(folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip() == f"ue-dpo data: error: {bad} {message}{fix}"


def test_a_mistyped_relative_source_folder_is_named_not_downloaded(sources, tmp_path, monkeypatch):
    """Issue 24 item 6: `--source data/rlaif-v` for data/rlaif_v was taken for a hub id and failed as a download."""
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("a local folder was taken for a hub id")

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "rlaif_v").mkdir(parents=True)
    expected = (
        f"--source folder data/rlaif-v does not exist in {tmp_path} (did you mean data/rlaif_v?); pass the "
        "folder holding the openbmb/RLAIF-V-Dataset parquet or arrow files. (data/ is a folder here, so "
        "data/rlaif-v is not taken for a hub dataset id; to download one, run from another folder.)"
    )
    with pytest.raises(SourceError) as refused:
        convert("rlaif_v", tmp_path / "out", source="data/rlaif-v")
    assert str(refused.value) == expected

    done = subprocess.run(
        [str(UE_DPO_CLI), "data", "rlaif_v", "--out", "out", "--source", "data/rlaif-v"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == f"ue-dpo data: error: {expected}"

    # Without a local data/ it may be a hub id: the download's failure now also names the folder that is not there.
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        SourceError,
        match=r"cannot download dta/rlaif-v at revision main \(OSError: offline\); .* "
        rf"Nor is dta/rlaif-v a folder under {re.escape(str(tmp_path))}: if you "
        "meant one, check its spelling",
    ):
        convert("rlaif_v", tmp_path / "out", source="dta/rlaif-v")


def test_cli_converts_and_reports_or_stops_with_a_message_naming_the_sample(sources, tmp_path):
    command = [
        str(UE_DPO_CLI),
        "data",
        "rlaif_v",
        "--out",
        str(tmp_path / "data"),
        "--source",
        str(sources["rlaif_v"]),
        "--first",
        "3",
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (  # rows 0-2: 0 and 2 are good; rows 3 and 4 are never read
        f"rlaif_v: wrote 2 pairs (2 distinct images) to {tmp_path / 'data' / 'rlaif_v.json'}; skipped 1 bad samples "
        f"(listed in {tmp_path / 'data' / 'rlaif_v_skipped.jsonl'}); source recorded in "
        f"{tmp_path / 'data' / 'rlaif_v_source.json'}"
    )
    assert json.loads((tmp_path / "data" / "rlaif_v.json").read_text()) == EXPECTED_RLAIF_V
    assert "skipping rlaif_v sample at row 1 (idx 'rlaif_shard0_1'): it has no image" in done.stderr

    stopped = subprocess.run(
        [*command[:4], str(tmp_path / "strict"), *command[5:], "--on-bad-sample", "error"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 2
    assert stopped.stderr.strip().splitlines()[-1] == (
        "ue-dpo data: error: rlaif_v sample at row 1 (idx 'rlaif_shard0_1'): it has no image. Fix or remove that "
        "row, or pass --on-bad-sample skip."
    )
    assert "Traceback" not in stopped.stderr

    unseeded = subprocess.run([*command[:7], "--seed", "3"], check=False, capture_output=True, text=True, timeout=120)
    assert unseeded.returncode == 2  # a user error, as every subcommand exits
    assert unseeded.stderr.strip() == (
        "ue-dpo data: error: --seed applies to --random N; pass --random N --seed S, or drop --seed"
    )
    both = subprocess.run([*command, "--random", "2"], check=False, capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "argument --random: not allowed with argument --first" in both.stderr


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_converted_datasets_tokenise_with_llamafactorys_own_loader(arch, sources, request, tmp_path):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    data_dir = tmp_path / "data"
    convert("rlhf_v", data_dir, source=str(sources["rlhf_v"]))
    convert("rlaif_v", data_dir, source=str(sources["rlaif_v"]))
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(request.getfixturevalue(f"tiny_{arch}_dir")),
            "stage": "dpo",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "rlhf_v,rlaif_v",
            "dataset_dir": str(data_dir),
            "template": arch,
            "cutoff_len": 512,
            "output_dir": str(tmp_path / "out"),
            "report_to": "none",
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    rows = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)["train_dataset"]

    records = EXPECTED_RLHF_V + EXPECTED_RLAIF_V
    assert len(rows) == len(records)
    image_token = {"llava": "<image>", "qwen2_vl": "<|image_pad|>"}[arch]
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    for row, record in zip(rows, records, strict=True):
        assert row["images"] == [str(data_dir / record["images"][0])]
        for side in ("chosen", "rejected"):
            trained_on = [token for token in row[f"{side}_labels"] if token != -100]
            assert tokenizer.decode(trained_on) == record[side]["content"] + ANSWER_END[arch]
            prompt = row[f"{side}_input_ids"][: len(row[f"{side}_input_ids"]) - len(trained_on)]
            # the one <image> became the image's visual tokens, in one run, followed by "\n" and the question
            first_image_token = prompt.index(image_token_id)
            image_tokens = visual_tokens(arch, tokenizer_module["processor"], row["images"][0])
            assert prompt[first_image_token : first_image_token + image_tokens] == [image_token_id] * image_tokens
            before, after = PROMPT_AROUND_IMAGE[arch]
            question = record["messages"][0]["content"].removeprefix("<image>\n")
            assert tokenizer.decode(prompt[:first_image_token]) == before
            assert tokenizer.decode(prompt[first_image_token + image_tokens :]) == after.format(question=question)
            assert image_token_id not in row[f"{side}_input_ids"][len(prompt) :]


def visual_tokens(arch, processor, path) -> int:
    """What the model consumes for the image: LLaVA a fixed patch grid, Qwen2-VL its merged grid."""
    if arch == "llava":
        return (LLAVA_IMAGE_SIZE // VISION_PATCH_SIZE) ** 2
    from PIL import Image

    with Image.open(path) as image:  # 40 x 30 pixels: inside LLaMA-Factory's pixel bounds, so not resized first
        grid = processor.image_processor(images=[image.convert("RGB")]).image_grid_thw
    return int(grid.prod()) // processor.image_processor.merge_size**2
