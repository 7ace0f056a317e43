"""A LLaMA-Factory dataset of the shapes pairs with the peer methods' image columns registered in dataset_info.json."""

import json
from pathlib import Path

from PIL import Image

# our column -> the column of the file that holds it (named apart from ours, as a user's file would be)
FILE_COLUMNS = {
    "second_image": "m_prime",
    "chosen_image": "image_w",
    "rejected_image": "image_l",
    "region_mask": "objects_mask",
}


def second_image_row(row: int, rows: int) -> int:
    """The shapes image that is row `row`'s m' (another scene, of the same size)."""
    return (row + 1) % rows


def rejected_image_row(row: int, rows: int) -> int:
    return (row + 2) % rows


def mask_box(row: int) -> tuple[int, int, int, int] | None:
    """The white box (left, top, right, bottom) of row `row`'s region mask; None: an all-black mask."""
    return None if row == 1 else ((0, 0, 28, 56) if row == 0 else (7, 14, 35, 42))


def write_column_dataset(out_dir: Path, shapes_dir: Path, *, formatting: str = "sharegpt", name: str = "columns"):
    """`<name>`: the rows of `shapes_dir`'s `shapes_pref` with absolute image paths and the four columns, in the
    sharegpt or the alpaca format. The masks are written to `out_dir/masks/`. Returns the records written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = json.loads((shapes_dir / "shapes_pref.json").read_text())
    images = [str(shapes_dir / record["images"][0]) for record in source]
    (out_dir / "masks").mkdir(exist_ok=True)
    records = []
    for row, record in enumerate(source):
        mask = Image.new("L", (56, 56), 0)
        if mask_box(row) is not None:
            mask.paste(255, mask_box(row))
        mask.save(out_dir / "masks" / f"{row}.png")
        columns = {
            "images": [images[row]],
            "id": f"pair-{row}",
            FILE_COLUMNS["second_image"]: [images[second_image_row(row, len(source))]],
            FILE_COLUMNS["chosen_image"]: images[row],
            FILE_COLUMNS["rejected_image"]: images[rejected_image_row(row, len(source))],
            FILE_COLUMNS["region_mask"]: f"masks/{row}.png",  # relative to media_dir, as `images` may be
        }
        if formatting == "sharegpt":
            records.append({**{key: record[key] for key in ("messages", "chosen", "rejected")}, **columns})
        else:
            prompt = record["messages"][0]["content"]
            chosen, rejected = record["chosen"]["content"], record["rejected"]["content"]
            records.append({"instruction": prompt, "chosen": chosen, "rejected": rejected, **columns})
    (out_dir / f"{name}.json").write_text(json.dumps(records, indent=1))
    columns = {"images": "images", "chosen": "chosen", "rejected": "rejected", **FILE_COLUMNS}
    entry = {"file_name": f"{name}.json", "formatting": formatting, "ranking": True, "columns": columns}
    if formatting == "sharegpt":
        columns["messages"] = "messages"
        entry["tags"] = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    else:
        columns["prompt"] = "instruction"
    info_path = out_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = entry
    info_path.write_text(json.dumps(info, indent=1))
    return records
