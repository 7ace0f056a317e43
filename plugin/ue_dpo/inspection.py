"""`ue-dpo inspect`: where UE-DPO's weights land, token by token, for any checkpoint.

The model, template, data and collator come from `build_ue_dpo_trainer` (LLaMA-Factory's own loaders, so the
tokens are those training sees) and every number from `UEDPOTrainer.token_weighting`, the function the loss reads.
Writes `index.html` (self-contained: one span per response token, coloured by category, u/Δ/λ on hover),
`pair_NNN.png` (the same tokens drawn with PIL), `tokens.json` and `summary.json` (with word groups, the Type-I
rates of the chosen tokens inside and outside each group's regex matches).
"""

import base64
import html
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw, ImageFont

from ue_dpo.core.weights import CATEGORY_NAMES, TYPE_I_BLIND_SPOT
from ue_dpo.llamafactory.integration import apply as apply_llamafactory_integration
from ue_dpo.model_families import TEMPLATE_BY_MODEL_TYPE, default_template
from ue_dpo.model_paths import is_local_path
from ue_dpo.yaml_errors import describe_yaml_error

CATEGORY_COLOURS = ("#e8e8e8", "#f28b82", "#fbc16a", "#8ab4f8")  # indexed like CATEGORY_NAMES
FILE_DATASET = "ue_dpo_inspect"
_SHAREGPT_COLUMNS = {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"}
_SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


class InspectError(ValueError):
    """Bad `ue-dpo inspect` input; the message names the argument and the fix."""


@dataclass
class InspectedToken:
    text: str
    token_id: int
    uncertainty: float | None  # None for rows without an image (λ = 1, nothing is measured)
    delta: float | None
    weight: float
    category: int


@dataclass
class InspectedPair:
    index: int
    prompt: str
    image_png: bytes | None
    chosen: list[InspectedToken]
    rejected: list[InspectedToken]


def model_keys(model: str, template: str | None, base_model: str | None = None) -> dict[str, Any]:
    """LLaMA-Factory keys that load `model` (a full model directory or a LoRA adapter directory, whose base is
    `base_model` when given, else the one its adapter_config.json names)."""
    path = Path(model)
    if not path.is_dir():
        raise InspectError(f"--model {model}: no such directory; give a model directory or a LoRA adapter directory.")
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = base_model or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise InspectError(
                f"--model {model}: {adapter_config} names no base_model_name_or_path; pass --base-model PATH."
            )
        if is_local_path(base) and not Path(base).exists():
            if base_model is not None:
                raise InspectError(f"--base-model {base}: no such directory; give the adapter's base model.")
            raise InspectError(
                f"--model {model}: the base model {base} named in {adapter_config} "
                "(base_model_name_or_path) does not exist; pass --base-model PATH where it is now."
            )
        keys = {"model_name_or_path": base, "adapter_name_or_path": str(path), "finetuning_type": "lora"}
        config_dir = Path(base)
    elif base_model is not None:
        raise InspectError(
            f"--base-model {base_model} was given, but --model {model} is not a LoRA adapter directory "
            "(no adapter_config.json); drop --base-model."
        )
    elif (path / "config.json").is_file():
        keys = {"model_name_or_path": str(path), "finetuning_type": "full"}
        config_dir = path
    else:
        raise InspectError(f"--model {model}: holds neither config.json (a model) nor adapter_config.json (LoRA).")
    if template is None:
        config = {}
        if (config_dir / "config.json").is_file():
            config = json.loads((config_dir / "config.json").read_text())
        template = default_template(config)
        if template is None:
            raise InspectError(
                f"--model {model}: cannot tell the template from model_type {config.get('model_type')!r}; pass "
                f"--template ({', '.join(sorted(set(TEMPLATE_BY_MODEL_TYPE.values())))})."
            )
    return {**keys, "template": template}


def data_keys(data: str, dataset_dir: str, scratch_dir: Path) -> dict[str, Any]:
    """LLaMA-Factory keys for `data`: a dataset name in `dataset_dir`, or a sharegpt preference file."""
    path = Path(data)
    if path.is_file():
        scratch_dir.mkdir(parents=True, exist_ok=True)
        entry = {
            "file_name": str(path.resolve()),
            "formatting": "sharegpt",
            "ranking": True,
            "columns": _SHAREGPT_COLUMNS,
            "tags": _SHAREGPT_TAGS,
        }
        (scratch_dir / "dataset_info.json").write_text(json.dumps({FILE_DATASET: entry}, indent=1))
        return {"dataset": FILE_DATASET, "dataset_dir": str(scratch_dir), "media_dir": str(path.resolve().parent)}
    info_path = Path(dataset_dir) / "dataset_info.json"
    if not info_path.is_file():
        raise InspectError(
            f"--data {data}: not a file, and {info_path} does not exist to look it up as a dataset name; pass the "
            "folder holding dataset_info.json with --dataset-dir, or a preference file."
        )
    names = sorted(json.loads(info_path.read_text()))
    if data not in names:
        raise InspectError(f"--data {data}: no such dataset in {info_path}; it lists: {', '.join(names)}.")
    return {"dataset": data, "dataset_dir": dataset_dir}


def parse_ue_settings(settings: list[str]) -> dict[str, Any]:
    """`ue_KEY=VALUE` strings (values read as YAML scalars) to keys; the weighting is always UE-DPO's."""
    keys = {}
    for setting in settings:
        name, separator, value = setting.partition("=")
        if not separator or not name.startswith("ue_"):
            raise InspectError(f"--ue {setting}: use ue_KEY=VALUE with a UE-DPO key, e.g. --ue ue_tau=0.3.")
        try:
            keys[name] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise InspectError(f"--ue {setting}: the value is not valid YAML ({describe_yaml_error(error)}).") from None
    if keys.get("ue_weighting", "ue") != "ue":
        raise InspectError("--ue ue_weighting: the inspector shows UE-DPO's categories; leave ue_weighting out.")
    alpha = keys.get("ue_alpha", 0.3)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise InspectError(f"--ue ue_alpha: must be a number in (0, 1), got {alpha!r}.")
    if alpha <= 0:
        raise InspectError("--ue ue_alpha: must be > 0 (α = 0 skips the noised pass, so u and Δ are not measured).")
    return keys


def build_trainer(
    model_settings: dict, data_settings: dict, ue_settings: dict, *, n: int, cutoff_len: int, out_dir: Path
):
    # Both import LLaMA-Factory (half a minute, and its version check), which only building the trainer needs.
    from llamafactory.hparams import get_train_args

    from ue_dpo.llamafactory.workflow import build_ue_dpo_trainer

    apply_llamafactory_integration()
    config = {
        **model_settings,
        **data_settings,
        **ue_settings,
        "stage": "ue_dpo",
        "ue_weighting": "ue",
        "do_train": False,
        "max_samples": n,
        "cutoff_len": cutoff_len,
        "output_dir": str(out_dir),
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "report_to": "none",
    }
    try:
        model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    except ValueError as error:  # a refused key or value, named in the message
        raise InspectError(f"{error} (set by --ue, --template or --cutoff-len)") from None
    trainer, _ = build_ue_dpo_trainer(model_args, data_args, training_args, finetuning_args)
    return trainer


def _image_png(images: list, max_side: int = 224) -> bytes | None:
    if not images:
        return None
    image = images[0]
    image = Image.open(image).convert("RGB") if isinstance(image, str) else image.convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def inspect_pairs(trainer, *, batch_size: int) -> list[InspectedPair]:
    """Runs `token_weighting` over the trainer's dataset and collects each response token's numbers."""
    import torch
    from llamafactory.extras.constants import IGNORE_INDEX

    dataset, tokenizer, model = trainer.train_dataset, trainer.processing_class, trainer.model
    model.eval()
    pairs = []
    for start in range(0, len(dataset), batch_size):
        features = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        inputs = trainer._prepare_inputs(trainer.data_collator(features))
        with torch.no_grad():
            tokens = trainer.token_weighting(model, inputs)
        for offset, feature in enumerate(features):
            rows = (offset, len(features) + offset)
            responses = [_row_tokens(tokens, row, tokenizer) for row in rows]
            prompt_ids = [
                token
                for token, label in zip(feature["chosen_input_ids"], feature["chosen_labels"])
                if label == IGNORE_INDEX
            ]
            prompt = " ".join(tokenizer.decode(prompt_ids, skip_special_tokens=True).split())
            pairs.append(InspectedPair(start + offset, prompt, _image_png(feature.get("images") or []), *responses))
    return pairs


def _row_tokens(tokens, row: int, tokenizer) -> list[InspectedToken]:
    response, details = tokens.response, tokens.details
    positions = response.mask[row].nonzero().squeeze(-1).tolist()
    measured = bool(response.has_image[row])
    found = []
    for position in positions:
        token_id = int(response.targets[row, position])
        found.append(
            InspectedToken(
                text=tokenizer.decode([token_id]),
                token_id=token_id,
                uncertainty=float(details["uncertainty"][row, position]) if measured else None,
                delta=float(details["delta"][row, position]) if measured else None,
                weight=float(tokens.weights[row, position]),
                category=int(details["category"][row, position]),
            )
        )
    return found


def category_summary(pairs: list[InspectedPair]) -> dict[str, Any]:
    counts = {
        side: Counter(token.category for pair in pairs for token in getattr(pair, side))
        for side in ("chosen", "rejected")
    }
    total = sum(sum(counter.values()) for counter in counts.values())
    return {
        "pairs": len(pairs),
        "response_tokens": total,
        "categories": {
            name: {
                "chosen": counts["chosen"][code],
                "rejected": counts["rejected"][code],
                "share": (counts["chosen"][code] + counts["rejected"][code]) / total if total else 0.0,
            }
            for code, name in enumerate(CATEGORY_NAMES)
        },
    }


def parse_word_groups(specs: list[str]) -> dict[str, re.Pattern]:
    """`NAME=REGEX` strings (`--word-group`) to compiled patterns, by name."""
    groups = {}
    for spec in specs:
        name, separator, pattern = spec.partition("=")
        if not separator or not name or not pattern:
            raise InspectError(f"--word-group {spec}: use NAME=REGEX, e.g. --word-group 'faint=small grey \\w+'.")
        if name in groups:
            raise InspectError(f"--word-group {spec}: the group {name!r} is given twice; give each group one name.")
        try:
            groups[name] = re.compile(pattern)
        except re.error as error:
            raise InspectError(
                f"--word-group {spec}: {pattern!r} is not a Python regular expression ({error})."
            ) from None
    return groups


def _in_matches(tokens: list[InspectedToken], pattern: re.Pattern) -> list[bool]:
    """Per token: whether its characters overlap a match of `pattern` in the tokens' concatenated text."""
    text = "".join(token.text for token in tokens)
    matches = [match.span() for match in pattern.finditer(text) if match.end() > match.start()]
    inside, start = [], 0
    for token in tokens:
        end = start + len(token.text)
        inside.append(any(start < match_end and end > match_start for match_start, match_end in matches))
        start = end
    return inside


def word_group_summary(pairs: list[InspectedPair], groups: dict[str, re.Pattern]) -> dict[str, Any]:
    """Per group, over the chosen response tokens: tokens inside the group's matches and outside them, how many of
    each are Type-I blind spots and how many have λ > 1, the Type-I rates and their ratio (inside / outside)."""
    summary = {}
    for name, pattern in groups.items():
        counts = Counter()
        for pair in pairs:
            for token, inside in zip(pair.chosen, _in_matches(pair.chosen, pattern)):
                where = "inside" if inside else "outside"
                counts[f"tokens_{where}"] += 1
                counts[f"type_i_{where}"] += token.category == TYPE_I_BLIND_SPOT
                counts[f"lambda_above_1_{where}"] += token.weight > 1.0
        rates = {
            where: counts[f"type_i_{where}"] / counts[f"tokens_{where}"] if counts[f"tokens_{where}"] else None
            for where in ("inside", "outside")
        }
        summary[name] = {
            "pattern": pattern.pattern,
            **{
                key: counts[key]
                for where in ("inside", "outside")
                for key in (f"tokens_{where}", f"type_i_{where}", f"lambda_above_1_{where}")
            },
            "type_i_rate_inside": rates["inside"],
            "type_i_rate_outside": rates["outside"],
            "type_i_rate_ratio": rates["inside"] / rates["outside"]
            if rates["inside"] is not None and rates["outside"]
            else None,
        }
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['pairs']} pairs, {summary['response_tokens']} response tokens",
        f"{'category':<26}{'chosen':>8}{'rejected':>10}{'share':>9}",
    ]
    for name, row in summary["categories"].items():
        lines.append(f"{name:<26}{row['chosen']:>8}{row['rejected']:>10}{row['share']:>9.1%}")
    for name, row in summary.get("word_groups", {}).items():
        lines.append(f"word group {name} ({row['pattern']}), chosen tokens:")
        for where in ("inside", "outside"):
            lines.append(
                f"  {where:<8} {row[f'tokens_{where}']:>6} tokens, {row[f'type_i_{where}']:>6} Type-I "
                f"(rate {_number(row[f'type_i_rate_{where}'])}), "
                f"{row[f'lambda_above_1_{where}']:>6} with λ > 1"
            )
        lines.append(f"  Type-I rate ratio inside / outside: {_number(row['type_i_rate_ratio'])}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _token_span(token: InspectedToken) -> str:
    title = (
        f"u = {_number(token.uncertainty)}, Δ = {_number(token.delta)}, λ = {token.weight:.4f} "
        f"({CATEGORY_NAMES[token.category]})"
    )
    data = {"u": token.uncertainty, "delta": token.delta, "lambda": token.weight}
    attributes = " ".join(f'data-{key}="{"" if value is None else repr(value)}"' for key, value in data.items())
    return (
        f'<span class="tok c{token.category}" data-category="{token.category}" data-token-id="{token.token_id}" '
        f'{attributes} title="{html.escape(title)}">{html.escape(token.text)}</span>'
    )


def render_html(pairs: list[InspectedPair], summary: dict[str, Any], *, title: str) -> str:
    colours = "\n".join(f".c{code} {{ background: {colour}; }}" for code, colour in enumerate(CATEGORY_COLOURS))
    legend = " ".join(
        f'<span class="tok c{code}">{html.escape(name)}</span>' for code, name in enumerate(CATEGORY_NAMES)
    )
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{row['chosen']}</td><td>{row['rejected']}</td>"
        f"<td>{row['share']:.1%}</td></tr>"
        for name, row in summary["categories"].items()
    )
    sections = []
    for pair in pairs:
        image = ""
        if pair.image_png is not None:
            image = f'<img alt="image" src="data:image/png;base64,{base64.b64encode(pair.image_png).decode()}">'
        responses = "".join(
            f'<div class="response {side}"><b>{side}</b><p>{"".join(_token_span(t) for t in getattr(pair, side))}</p>'
            f"</div>"
            for side in ("chosen", "rejected")
        )
        sections.append(
            f'<section class="pair" id="pair-{pair.index}"><h2>pair {pair.index}</h2>{image}'
            f'<p class="prompt">{html.escape(pair.prompt)}</p>{responses}</section>'
        )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; }}
.tok {{ white-space: pre-wrap; border-radius: 3px; font-family: monospace; }}
{colours}
img {{ float: right; margin-left: 1em; }}
.pair {{ border-top: 1px solid #ccc; clear: both; overflow: auto; }}
.prompt {{ color: #555; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: right; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Hover a token for u, Δ and λ. {legend}</p>
<table><tr><th>category</th><th>chosen</th><th>rejected</th><th>share</th></tr>{rows}</table>
{"".join(sections)}
</body></html>
"""


def render_png(pair: InspectedPair, width: int = 960) -> Image.Image:
    """The pair's response tokens as coloured boxes, wrapped to `width` pixels."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height, margin = 16, 8
    placed, x, y = [], margin, margin

    def new_line(extra: int = 0):
        nonlocal x, y
        x, y = margin, y + line_height + extra

    for side in ("chosen", "rejected"):
        placed.append((side + ":", x, y, None))
        new_line()
        for token in getattr(pair, side):
            text = token.text.replace("\n", "\\n") or " "
            text_width = int(probe.textlength(text, font=font)) + 2
            if x + text_width > width - margin:
                new_line()
            placed.append((text, x, y, token.category))
            x += text_width
        new_line(extra=line_height // 2)
    image = Image.new("RGB", (width, y + margin), "white")
    draw = ImageDraw.Draw(image)
    for text, left, top, category in placed:
        if category is not None:
            right = left + int(draw.textlength(text, font=font)) + 1
            draw.rectangle((left, top, right, top + line_height - 2), fill=CATEGORY_COLOURS[category])
        draw.text((left + 1, top + 1), text, fill="black", font=font)
    return image


def write_report(
    pairs: list[InspectedPair], out_dir: Path, *, title: str, word_groups: dict[str, re.Pattern] | None = None
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = category_summary(pairs)
    if word_groups:
        summary["word_groups"] = word_group_summary(pairs, word_groups)
    (out_dir / "index.html").write_text(render_html(pairs, summary, title=title), encoding="utf-8")
    for pair in pairs:
        render_png(pair).save(out_dir / f"pair_{pair.index:03d}.png")
    tokens = [
        {
            "index": pair.index,
            "prompt": pair.prompt,
            **{side: [token.__dict__ for token in getattr(pair, side)] for side in ("chosen", "rejected")},
        }
        for pair in pairs
    ]
    (out_dir / "tokens.json").write_text(json.dumps(tokens, indent=1, ensure_ascii=False), encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
