"""Our tasks under lmms-eval's chat models, and `ue-dpo run` through an inference server (`evaluation.server`).

- The chat task's messages, rendered by the chat template a served folder carries, are token for token the prompt
  `ue_dpo_hf` encodes with LLaMA-Factory's template, for every family (and for training's `image_max_pixels` and
  InternVL's `crop_to_patches`); a chat template that renders another prompt is refused. One `transformers serve`
  answers every family's served folder greedily as `ue_dpo_hf` does.
- `ue-dpo run` merges a tiny Qwen2-VL LoRA adapter with `llamafactory-cli export`, serves it with
  `transformers serve` and evaluates it with lmms-eval's `openai` model; the responses and scores equal
  `ue_dpo_hf`'s greedy ones on the adapter dir, item for item. A second `ue-dpo run` skips every stage.
- A server that never gets healthy, a port taken, a failing merge, and a template without `{model}`.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llamafactory_runs import offline_env
from ue_dpo.evaluation.chat import (
    TEMPLATE_ENV,
    ChatTemplateError,
    chat_prompt_env,
    check_served_prompt,
    training_chat_template,
    write_training_chat_template,
)
from ue_dpo.experiment import server as server_module
from ue_dpo.experiment.config import ExperimentConfigError, Server, parse_experiment
from ue_dpo.experiment.server import ServerError, served_model
from ue_dpo.experiment.serving import check_lossless_images, files_digest, prepare_served_model
from ue_dpo.experiment.stages import Markers, StageError
from ue_dpo.synthetic.shapes import CAPTION_PROMPT

BIN = Path(sys.executable).parent
EVAL_IMAGES = 4
MAX_NEW_TOKENS = 12
SHAPES_METRICS = ("chair_s", "chair_s_all", "chair_i", "recall", "mean_shapes_mentioned")


@pytest.fixture(scope="module")
def shapes_eval_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("served_shapes") / "eval"
    result = subprocess.run(
        [str(BIN / "ue-dpo"), "shapes-eval", "--out", str(out), "--images", str(EVAL_IMAGES)],
        env=offline_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def chat_task(monkeypatch, shapes_eval_dir, template: str | None):
    from lmms_eval.tasks import TaskManager

    monkeypatch.setenv("UE_DPO_SHAPES_EVAL_DIR", str(shapes_eval_dir))
    if template is None:
        monkeypatch.delenv(TEMPLATE_ENV, raising=False)
    else:
        monkeypatch.setenv(TEMPLATE_ENV, template)
    return TaskManager().load_task_or_group("shapes_caption", task_type="chat")["shapes_caption"]


SERVED_FAMILIES = [
    ("tiny_qwen2_vl_dir", "qwen2_vl", {}),
    ("tiny_llava_dir", "llava", {}),
    ("tiny_glm4v_dir", "glm4v", {}),
    ("tiny_llava_next_dir", "llava_next", {}),
    ("tiny_qwen3_vl_dir", "qwen3_vl", {}),
    ("tiny_qwen3_5_dir", "qwen3_5", {}),
    ("tiny_glm4v_moe_dir", "glm4_5v", {}),
    ("tiny_llama4_dir", "llama4", {}),
    ("tiny_mistral3_dir", "mistral_small", {}),
    ("tiny_pixtral_dir", "pixtral", {}),
    ("tiny_gemma3_dir", "gemma3", {}),
    ("tiny_internvl_dir", "intern_vl", {}),
    ("tiny_internvl_dir", "intern_vl", {"crop_to_patches": True}),
]


@pytest.mark.parametrize(
    ("fixture", "template", "prompt_args"),
    [
        *SERVED_FAMILIES,
        # images above image_max_pixels: resized by LLaMA-Factory's rule before the server's processor sees them
        ("tiny_qwen2_vl_dir", "qwen2_vl", {"image_max_pixels": 40 * 30, "image_min_pixels": 16 * 16}),
    ],
)
def test_a_chat_task_rendered_by_the_served_chat_template_is_the_training_prompt(
    request, tmp_path, monkeypatch, shapes_eval_dir, fixture, template, prompt_args
):
    from lmms_eval.api.task import ConfigurableMessagesTask
    from lmms_eval.protocol import ChatMessages
    from transformers import AutoProcessor

    from ue_dpo.evaluation.model import UeDpoHF

    served = tmp_path / "served"
    shutil.copytree(request.getfixturevalue(fixture), served)
    write_training_chat_template(served, template, crop_to_patches=prompt_args.get("crop_to_patches", False))
    for variable, value in chat_prompt_env(template, prompt_args).items():
        monkeypatch.setenv(variable, value)
    task = chat_task(monkeypatch, shapes_eval_dir, template)
    assert isinstance(task, ConfigurableMessagesTask)
    ue_dpo_hf = UeDpoHF(pretrained=str(served), device="cpu", **prompt_args)
    processor = AutoProcessor.from_pretrained(served)
    docs = task.test_docs()
    for doc in docs:
        messages = task.doc_to_messages(doc)
        assert messages[0] == {
            "role": "system",
            "content": [{"type": "text", "text": ue_dpo_hf.template.default_system}],
        }
        image = task.doc_to_visual(doc)[0]
        sent = messages[1]["content"][0]["url"]  # what the server receives
        if "image_max_pixels" in prompt_args:  # 56 x 56 into 1200 pixels: int(56 * sqrt(1200 / 3136)) a side
            assert sent.size == (34, 34) and image.size == (56, 56)
        else:
            assert sent.tobytes() == image.tobytes()
        # as a server hands them to the processor: the images as they arrive, then the text (vLLM tokenizes the
        # rendered prompt without adding special tokens; LLaMA-Factory's llava template has no BOS)
        hf_messages = ChatMessages(messages=messages).to_hf_messages()
        prompt = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
        served_ids = processor(text=prompt, images=[sent], add_special_tokens=False)["input_ids"][0]
        assert list(served_ids) == ue_dpo_hf.encode_prompt(CAPTION_PROMPT, [image])


@pytest.mark.e2e
def test_transformers_serve_answers_every_family_as_ue_dpo_hf(request, tmp_path, shapes_eval_dir):
    """One `transformers serve` (models loaded by the request's `model`), each family's served folder asked for a
    greedy caption of a shapes image through lmms-eval's own OpenAI message encoding: the answer is `ue_dpo_hf`'s."""
    from lmms_eval.protocol import ChatMessages
    from openai import OpenAI

    from ue_dpo.evaluation.chat import ChatPrompt
    from ue_dpo.evaluation.model import UeDpoHF
    from ue_dpo.evaluation.shapes_caption import load_shapes_eval_docs, shapes_doc_to_visual

    image = shapes_doc_to_visual(load_shapes_eval_docs(shapes_eval_dir)[0])[0]
    command = f"{BIN / 'transformers'} serve --host 127.0.0.1 --port {{port}} --device cpu --model-timeout 5"
    with served_model(command, "", log_path=tmp_path / "server.log", env=offline_env(), health_timeout_s=300) as url:
        client = OpenAI(base_url=url, api_key="EMPTY")
        answers = {}
        for index, (fixture, template, prompt_args) in enumerate(SERVED_FAMILIES):
            served = tmp_path / f"{index}_{template}"
            shutil.copytree(request.getfixturevalue(fixture), served)
            crop_to_patches = prompt_args.get("crop_to_patches", False)
            write_training_chat_template(served, template, crop_to_patches=crop_to_patches)
            ue_dpo_hf = UeDpoHF(pretrained=str(served), device="cpu", crop_to_patches=crop_to_patches)
            [expected] = ue_dpo_hf.generate([(CAPTION_PROMPT, [image])], {"max_new_tokens": 6, "until": []})
            prompt = ChatPrompt.from_settings({"template": template}, "shapes_caption")
            messages = ChatMessages(messages=prompt.messages([image], CAPTION_PROMPT)).to_openai_messages()
            reply = client.chat.completions.create(model=str(served), messages=messages, max_tokens=6, temperature=0)
            answers[served.name] = (reply.choices[0].message.content, expected)
    assert {name: reply for name, (reply, _) in answers.items()} == {
        name: expected for name, (_, expected) in answers.items()
    }
    assert len({expected for _, expected in answers.values()}) > len(answers) // 2  # the models answer differently


def test_a_chat_template_whose_prompt_is_not_the_training_prompt_is_refused_before_serving(tmp_path, tiny_llava_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    chat_template = training_chat_template("llava", processor)
    # the model's own tokenizer adds a BOS, which `transformers serve` keeps and LLaMA-Factory's llava prompt lacks
    bos = r"\(tokenized by the processor's chat template call\) differs from the training prompt from token 0 on"
    with pytest.raises(ChatTemplateError, match=bos):
        check_served_prompt("llava", processor, chat_template)
    processor.tokenizer.add_bos_token = False  # as a served folder's
    check_served_prompt("llava", processor, chat_template)
    # without the word boundary LLaMA-Factory's separate encoding of the system turn gives
    unspaced = chat_template.replace(" + ' '", "")
    assert unspaced != chat_template
    differs = r"served exactly: .*\(rendered, then tokenized\) differs from the training prompt from token \d+"
    with pytest.raises(ChatTemplateError, match=differs):
        check_served_prompt("llava", processor, unspaced)
    with pytest.raises(ChatTemplateError, match="cannot be served: its chat template fails on an image and a question"):
        check_served_prompt("llava", processor, "{{ messages[0]['content'] + 'x' }}")
    served = tmp_path / "served"
    shutil.copytree(tiny_llava_dir, served)
    before = {path.name: path.read_bytes() for path in served.iterdir()}
    with pytest.raises(ChatTemplateError, match="template 'llava': `crop_to_patches: true` has no effect on LLaVA"):
        write_training_chat_template(served, "llava", crop_to_patches=True)
    assert {path.name: path.read_bytes() for path in served.iterdir()} == before  # nothing written


@pytest.mark.parametrize("image_format", ["JPEG", "webp"])
def test_a_lossy_image_encoding_of_the_served_requests_is_refused(image_format):
    with pytest.raises(StageError, match=f"LMMS_IMAGE_ENCODE_FORMAT={image_format.upper()}: lmms-eval would send"):
        check_lossless_images({"LMMS_IMAGE_ENCODE_FORMAT": image_format})
    check_lossless_images({"LMMS_IMAGE_ENCODE_FORMAT": "png"})
    check_lossless_images({})


@pytest.mark.parametrize(
    ("template", "response", "answer"),
    [
        ("qwen3_vl", "<think>\nA circle?\n</think>\n\nThere is a red circle.", "There is a red circle."),
        ("qwen3_vl", "<think>\nA circle, or", "<think>\nA circle, or"),  # unclosed: kept, as ue_dpo_hf keeps it
        ("llava", "There is a red circle.", "There is a red circle."),
    ],
)
def test_a_chat_task_scores_the_answer_after_the_thought_block_as_ue_dpo_hf(
    monkeypatch, shapes_eval_dir, template, response, answer
):
    task = chat_task(monkeypatch, shapes_eval_dir, template)
    metadata = {"task": "shapes_caption", "doc_id": 0, "repeats": 1, "split": task.config.test_split}
    instance = task.construct_requests(0, "", metadata=metadata)
    instance.resps = [response]
    task._instances = [instance]
    task.apply_filters()
    assert instance.filtered_resps == {"none": answer}


def test_a_chat_task_without_the_training_template_is_refused(monkeypatch, shapes_eval_dir):
    with pytest.raises(ChatTemplateError, match=f"shapes_caption under a chat model needs .* {TEMPLATE_ENV}="):
        chat_task(monkeypatch, shapes_eval_dir, None)


def samples(output_path: Path) -> dict[int, str]:
    [found] = sorted(output_path.rglob("*_samples_shapes_caption.jsonl"))
    records = [json.loads(line) for line in found.read_text().splitlines()]
    return {record["doc_id"]: record["filtered_resps"] for record in records}


def port_answers(url: str) -> bool:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def random_lora_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter of `base` with random (non-zero) weights, as peft saves one (a LoRA output dir's files)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def ue_dpo_hf_greedy(lora_dir: Path, shapes_eval_dir: Path) -> tuple[dict[int, str], dict[str, float]]:
    """`ue_dpo_hf`'s greedy responses on the shapes items, and their exact CHAIR, computed here."""
    from ue_dpo.benchmarks.shapes_chair import (
        shapes_caption_item_result,
        shapes_chair_metrics,
    )
    from ue_dpo.evaluation.model import UeDpoHF
    from ue_dpo.evaluation.shapes_caption import (
        load_shapes_eval_docs,
        shapes_doc_to_visual,
    )

    model = UeDpoHF(pretrained=str(lora_dir), device="cpu")
    docs = load_shapes_eval_docs(shapes_eval_dir)
    texts = model.generate(
        [(CAPTION_PROMPT, shapes_doc_to_visual(doc)) for doc in docs], {"max_new_tokens": MAX_NEW_TOKENS, "until": []}
    )
    records = [shapes_caption_item_result(text, doc["shapes"]) for text, doc in zip(texts, docs)]
    return {doc["question_id"]: text for doc, text in zip(docs, texts)}, shapes_chair_metrics(records)


@pytest.mark.e2e
def test_ue_dpo_run_through_transformers_serve_scores_as_ue_dpo_hf(tmp_path, tiny_qwen2_vl_dir, shapes_eval_dir):
    lora_dir = random_lora_adapter(tiny_qwen2_vl_dir, tmp_path / "lora")
    experiment = {
        "output": str(tmp_path / "exp"),
        "runs": [{"name": "lora", "checkpoint": str(lora_dir)}],
        "evaluation": {
            "tasks": ["shapes_caption"],
            "gen_kwargs": {"max_new_tokens": MAX_NEW_TOKENS},
            "env": {"UE_DPO_SHAPES_EVAL_DIR": str(shapes_eval_dir)},
            "server": {
                "command": f"{BIN / 'transformers'} serve {{model}} --host 127.0.0.1 --port {{port}} --device cpu",
                "concurrency": 2,
                "health_timeout_s": 300,
                "merge_dtype": "float32",
            },
        },
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    run = subprocess.run(
        [str(BIN / "ue-dpo"), "run", str(tmp_path / "exp.yaml")],
        cwd=tmp_path,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    output = tmp_path / "exp"
    merge_marker = json.loads((output / "state" / "serve-lora.done.json").read_text())
    assert merge_marker["adapter_digest"] == files_digest(lora_dir)
    served = output / "served" / "lora"
    assert "<|im_start|>system" in (served / "chat_template.jinja").read_text()
    # the merge is a cached stage: with its marker current, no export runs (`false` would fail it)
    assert (
        prepare_served_model(
            "lora",
            str(lora_dir),
            output=output,
            markers=Markers(output),
            server=Server(command="x {model} {port}", merge_dtype="float32"),
            env=offline_env(),
            llamafactory_cli=shutil.which("false"),
        )[0]
        == served
    )
    (entry,) = json.loads((output / "state" / "eval-lora.done.json").read_text())["lmms_eval_entries"]
    assert entry["model"] == "openai" and "num_concurrent=2" in entry["model_args"]
    base_url = next(arg.split("=", 1)[1] for arg in entry["model_args"].split(",") if arg.startswith("base_url="))
    assert not port_answers(base_url), "the server is still running after `ue-dpo run`"

    expected_texts, expected_metrics = ue_dpo_hf_greedy(lora_dir, shapes_eval_dir)
    assert samples(output / "evals" / "lora") == expected_texts
    assert len(set(expected_texts.values())) > 1 and all(text.strip() for text in expected_texts.values())
    results = json.loads((output / "results.json").read_text())
    measured = next(run for run in results["runs"] if run["name"] == "lora")["metrics"]["shapes_caption"]
    assert {metric: measured[metric] for metric in SHAPES_METRICS} == {
        metric: expected_metrics[metric] for metric in SHAPES_METRICS
    }

    again = subprocess.run(
        [str(BIN / "ue-dpo"), "run", str(tmp_path / "exp.yaml")],
        cwd=tmp_path,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every run done, skipped" in again.stdout


def health_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "health").write_text("ok")
    return folder


HTTP_SERVER = f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1 --directory {{model}}"


def test_a_server_that_never_gets_healthy_is_stopped_and_its_log_tail_shown(tmp_path):
    command = (
        f"{sys.executable} -c \"import sys, time; print('loading', sys.argv[1:], flush=True); time.sleep(600)\" "
        "{model} {port}"
    )
    started = time.monotonic()
    with (
        pytest.raises(ServerError, match=r"(?s)not healthy .* after 2 s, so it was stopped.*loading \['m', '\d+'\]"),
        served_model(command, "m", log_path=tmp_path / "server.log", env=offline_env(), health_timeout_s=2),
    ):
        pytest.fail("the block ran without a healthy server")
    assert time.monotonic() - started < 30


def test_a_port_taken_before_the_server_binds_it_is_retried_on_another(tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = server_module.free_port
        monkeypatch.setattr(server_module, "free_port", lambda: next(ports, None) or real_free_port())
        with served_model(
            HTTP_SERVER,
            str(health_dir(tmp_path)),
            log_path=tmp_path / "server.log",
            env=offline_env(),
            health_timeout_s=60,
        ) as base_url:
            assert not base_url.endswith(f":{taken.getsockname()[1]}/v1")
            import urllib.request

            with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health") as response:
                assert response.read() == b"ok"
    assert "Address already in use" in (tmp_path / "server.log").read_text()
    assert not port_answers(base_url)


def test_the_server_is_stopped_when_the_evaluation_fails(tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        served_model(
            HTTP_SERVER,
            str(health_dir(tmp_path)),
            log_path=tmp_path / "server.log",
            env=offline_env(),
            health_timeout_s=60,
        ) as base_url,
    ):
        raise KeyboardInterrupt
    assert not port_answers(base_url)


def test_a_failed_merge_names_the_run_and_keeps_the_adapter(tmp_path, tiny_qwen2_vl_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tiny_qwen2_vl_dir)})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(StageError, match=r"merging run 'dpo' failed .*its adapter .*adapter is kept"):
        prepare_served_model(
            "dpo",
            str(adapter),
            output=tmp_path / "out",
            markers=Markers(tmp_path / "out"),
            server=Server(command="x {model} {port}"),
            env=offline_env(),
            llamafactory_cli=shutil.which("false"),
        )
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "out" / "served" / "dpo").exists()


def test_a_full_model_is_served_from_a_mirror_with_the_training_template_its_folder_untouched(
    tmp_path, tiny_qwen2_vl_dir
):
    before = {path.name: path.read_bytes() for path in Path(tiny_qwen2_vl_dir).iterdir()}
    served, template, _ = prepare_served_model(
        "full",
        str(tiny_qwen2_vl_dir),
        output=tmp_path,
        markers=Markers(tmp_path),
        server=Server(command="x {model} {port}"),
        env=offline_env(),
        llamafactory_cli=shutil.which("false"),
    )
    assert template == "qwen2_vl"
    assert (served / "model.safetensors").resolve() == (Path(tiny_qwen2_vl_dir) / "model.safetensors").resolve()
    assert (served / "chat_template.jinja").read_text() != before["chat_template.jinja"].decode()
    assert "<|vision_start|><|image_pad|><|vision_end|>" in (served / "chat_template.jinja").read_text()
    assert {path.name: path.read_bytes() for path in Path(tiny_qwen2_vl_dir).iterdir()} == before


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("vllm serve --port {port}", r"must be a command template with \{model\}"),
        ("vllm serve {model}", r"has no \{port\}"),
        ({"command": "vllm serve {model} --port {port}", "concurrency": 0}, "concurrency: must be a positive integer"),
    ],
)
def test_a_server_command_without_its_placeholders_is_refused_when_the_experiment_loads(tmp_path, server, message):
    raw = {
        "output": "x",
        "runs": [{"name": "base", "checkpoint": "m"}],
        "evaluation": {"tasks": ["shapes_caption"], "server": server},
    }
    with pytest.raises(ExperimentConfigError, match=message):
        parse_experiment(raw, base_dir=tmp_path)
