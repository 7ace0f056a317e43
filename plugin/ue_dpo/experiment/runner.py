"""`ue-dpo run`: train every run with `llamafactory-cli train`, evaluate every run with lmms-eval, report.

Stages, each skipped when its marker under `<output>/state/` holds the digest of its current config:
the synthetic world (when the file has one), one training per `train:` run (resumed from its last
`checkpoint-*` when an interrupted attempt of the same config left one), and one lmms-eval process for
the runs whose evaluation is not finished (with `evaluation.server`, one per run, each through its own
inference server: ue_dpo.experiment.serving). A digest covers the digests of the stages it reads from,
so retraining the warm-up retrains and re-evaluates everything built on it, and a training's digest covers
what `ue-dpo data` recorded of its datasets, so converting other rows retrains.

A run with `seeds:` is trained and evaluated once per seed, each as its own stages (`train-dpo@seed3`,
`eval-dpo@seed3`) into its own folders (`runs/dpo@seed3`, `evals/dpo@seed3`), so each seed is skipped,
resumed or redone on its own.

A run with `stages:` trains each instance in consecutive stages, one per difficulty level (`train-dpo@difficulty0`,
then `train-dpo@difficulty1`, into `runs/dpo@difficulty0`, ...), each a stage of its own whose digest covers the
previous stage's, so an interrupted run resumes in the stage it stopped in and a retrained stage retrains the ones
after it; the run's model (`${runs.NAME}`, its evaluation) is the last stage's (staged_config says how a stage
continues the previous one).

A cell of a sweep (ue_dpo.experiment.sweep) is run by the same runner with `home`: where each stage's folders and
marker are (`synthetic`, `runs.RUN` for RUN's trainings, `evals.RUN` for its evaluations), and its own folder for
its report and its lmms-eval config and log.
"""

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ue_dpo.datasets import read_provenance
from ue_dpo.evaluation.chat import chat_prompt_env
from ue_dpo.evaluation.judge_settings import ALLOW_JUDGE_FAILURES_ENV, JUDGE_CACHE_DIR_ENV, JUDGE_MODEL_ENV
from ue_dpo.evaluation.model_settings import TRAINING_PROMPT_KEYS, UE_DPO_HF
from ue_dpo.experiment.config import (
    SYNTHETIC_PATHS,
    Experiment,
    Protocol,
    Run,
    instance_name,
    references,
    run_of_instance,
    stage_instance,
    substitute,
)
from ue_dpo.experiment.layout import ExperimentLayout
from ue_dpo.experiment.outputs import read_lmms_eval_output
from ue_dpo.experiment.report import package_versions, write_report
from ue_dpo.experiment.server import served_model
from ue_dpo.experiment.serving import (
    check_lossless_images,
    check_no_failed_requests,
    prepare_served_model,
    served_model_args,
)
from ue_dpo.experiment.stages import Markers, StageError, digest, stream, weights_identity
from ue_dpo.machine import this_machine
from ue_dpo.synthetic.world import build_synthetic_world

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_SEED_DEFAULT = 42  # transformers.TrainingArguments.seed, used when a training config sets none
DATASET_DIR_DEFAULT = "data"  # llamafactory DataArguments.dataset_dir


def executable(name: str) -> str:
    """A console script of this environment (beside our Python), else from PATH, as given."""
    beside_python = Path(sys.executable).with_name(name)
    if os.sep not in name and beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise StageError(
            f"`{name}` was not found beside {sys.executable} or on PATH; install it "
            f"(pip install ue-dpo brings llamafactory-cli and lmms-eval)"
        )
    return found


def training_seeds(config: dict[str, Any]) -> dict[str, int]:
    seeds = {"seed": config.get("seed", TRAINING_SEED_DEFAULT)}
    if config.get("stage") == "ue_dpo":
        seeds["ue_seed"] = config.get("ue_seed", seeds["seed"])  # the noise seed defaults to the training seed
    return seeds


def training_data(config: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Each training dataset's record from `ue-dpo data` (hub revision, file digests, subset, rows read);
    None for a dataset it did not write."""
    names = config.get("dataset") or []
    names = names.split(",") if isinstance(names, str) else names
    dataset_dir = config.get("dataset_dir", DATASET_DIR_DEFAULT)
    return {name.strip(): read_provenance(dataset_dir, name.strip()) for name in names}


def last_checkpoint(output_dir: Path) -> Path | None:
    steps = [
        (int(path.name.removeprefix(CHECKPOINT_PREFIX)), path)
        for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.is_dir()
        and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        and (path / "trainer_state.json").is_file()
    ]
    return max(steps)[1] if steps else None


def staged_config(config: dict[str, Any], level: int, output_dir: str, previous: str | None) -> dict[str, Any]:
    """The LLaMA-Factory config of a run's stage on the rows of difficulty `level`, continuing from the weights the
    previous stage wrote to `previous` (None: the first stage, which starts where the run's config does).

    With LoRA, the previous stage's adapter is trained on (LLaMA-Factory 0.9.5 merges every adapter of
    `adapter_name_or_path` but the last into the model and resumes training the last, unless `create_new_adapter`),
    after the adapters the first stage merged; the reference stays the model with the adapter disabled, the first
    stage's. With full or freeze tuning, the stage starts from the previous stage's model and its reference is the
    first stage's model (`ref_model`, unless the config names one), as with LoRA rather than the model it starts from.
    """
    staged = {**config, "ue_difficulty": level, "output_dir": output_dir}
    if previous is None:
        return staged
    if config.get("finetuning_type", "lora") == "lora":
        adapters = config.get("adapter_name_or_path") or []
        if isinstance(adapters, str):  # LLaMA-Factory's comma-separated form
            adapters = [adapter.strip() for adapter in adapters.split(",")]
        merged = adapters if config.get("create_new_adapter") else adapters[:-1]
        staged["adapter_name_or_path"] = ",".join([*merged, previous])
        staged["create_new_adapter"] = False
    else:
        staged["model_name_or_path"] = previous
        staged.setdefault("ref_model", config["model_name_or_path"])
    return staged


def stage_home_key(stage: str) -> str:
    """Which home a stage's marker is in: `synthetic`, `runs.RUN` (train-RUN@seedS) or `evals.RUN` (eval-, serve-)."""
    if stage == "synthetic":
        return stage
    kind, _, name = stage.partition("-")
    return f"{'runs' if kind == 'train' else 'evals'}.{run_of_instance(name)}"


class ExperimentRunner:
    def __init__(
        self,
        experiment: Experiment,
        *,
        home: Callable[[str], Path] | None = None,
        own_dir: Path | None = None,
        finished: dict[Path, str] | None = None,
    ):
        """`home` maps `synthetic`, `runs.RUN` and `evals.RUN` to the folder of their stages (default: the output
        folder); `own_dir` holds the report and the lmms-eval config and log (default: the output folder);
        `finished` is the digest each shared marker was found or written with by the cells before (Markers)."""
        if experiment.cells:
            raise ValueError("a file with `sweep:` is run cell by cell: ue_dpo.experiment.sweep.run_sweep")
        self.experiment = experiment
        self.output = experiment.output.resolve()
        self.home = home
        self.layout = ExperimentLayout(self.output if own_dir is None else own_dir)
        route = None if home is None else lambda stage: home(stage_home_key(stage))
        self.markers = Markers(self.output, route, finished)
        # reference name -> what it stands for; a run trained per seed has one "runs.NAME@seedS" per seed
        self.paths: dict[str, str] = {"output": str(self.output)}
        self.digests: dict[str, str] = {}  # reference name ("synthetic.model", "runs.dpo") -> digest it stands for
        trainings = sum(
            len(run.each_seed) * len(run.difficulty_levels or (None,))
            for run in experiment.runs
            if run.train is not None
        )
        self.total_stages = (experiment.synthetic is not None) + trainings + 2
        self.stage_number = 0

    def layout_of(self, key: str) -> ExperimentLayout:
        """The layout of the folder `synthetic`, `runs.RUN` or `evals.RUN` keeps its stages in."""
        return ExperimentLayout(self.output if self.home is None else self.home(key))

    def eval_dir(self, name: str) -> Path:
        return self.layout_of(f"evals.{run_of_instance(name)}").eval_dir(name)

    def announce(self, text: str) -> None:
        self.stage_number += 1
        print(f"==> [ue-dpo run {self.stage_number}/{self.total_stages}] {text}", flush=True)

    def run(self) -> dict[str, Any]:
        self.output.mkdir(parents=True, exist_ok=True)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if self.experiment.synthetic is not None:
            self.build_synthetic()
        for run in self.experiment.runs:
            if run.train is not None:
                for seed in run.each_seed:
                    self.train(run, seed)
            else:
                checkpoint = substitute(run.checkpoint, self.paths)
                self.paths[f"runs.{run.name}"] = checkpoint
                identity = weights_identity(checkpoint)  # None for a hub id: its digest stays the name's
                self.digests[f"runs.{run.name}"] = digest(
                    checkpoint, self._upstream(run.checkpoint), *([] if identity is None else [identity])
                )
        self.evaluate()
        self.announce("report")
        results = write_report(self.experiment, self.markers, self.layout.root)
        print(
            f"==> results: {self.layout.results_md}, {self.layout.results_json}, "
            f"{self.layout.results_png} ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        return results

    def scope(self, seed: int | None) -> tuple[dict[str, str], dict[str, str]]:
        """The paths and digests `${...}` stands for in a training with `seed` (None: a run trained once), where
        `${runs.NAME}` of a run trained per seed is its model of the same seed."""
        paths, digests = dict(self.paths), dict(self.digests)
        for run in self.experiment.runs:
            name = f"runs.{instance_name(run.name, seed if run.seeds is not None else None)}"
            if name in self.paths and name in self.digests:  # NAME is done
                paths[f"runs.{run.name}"], digests[f"runs.{run.name}"] = self.paths[name], self.digests[name]
        return paths, digests

    def _upstream(self, value: Any, seed: int | None = None) -> dict[str, str]:
        digests = self.scope(seed)[1]
        return {name: digests[name] for name in references(value) if name in digests}

    def build_synthetic(self) -> None:
        world = self.experiment.synthetic
        root = self.layout_of("synthetic").synthetic
        stage_digest = digest("synthetic", world)
        for name in SYNTHETIC_PATHS:
            self.paths[f"synthetic.{name}"] = str(root / name)
            self.digests[f"synthetic.{name}"] = stage_digest
        if self.markers.matches("synthetic", stage_digest):
            self.announce(f"synthetic {world.world} world: done, skipped ({root})")
            return
        self.announce(
            f"synthetic {world.world} world: tiny {world.arch} model, {world.sft_examples} captions, "
            f"{world.preference_pairs} preference pairs, {world.eval_images} held-out images"
        )
        shutil.rmtree(root, ignore_errors=True)
        build_synthetic_world(world, root)
        self.markers.write("synthetic", stage_digest, world=world.__dict__)

    def training_config(self, run: Run, seed: int | None = None) -> dict[str, Any]:
        config = yaml.safe_load(run.train.read_text())
        config.update(substitute(run.overrides, self.scope(seed)[0]))
        if seed is not None:
            config["seed"] = seed
            if "ue_seed" in config:  # else it defaults to the training seed
                config["ue_seed"] = seed
        config["output_dir"] = str(self.layout_of(f"runs.{run.name}").run_dir(instance_name(run.name, seed)))
        return config

    def training_prompt_args(self, run: Run, seed: int | None = None) -> dict[str, Any]:
        """The keys of a run's training config that decide how it encodes prompts (`TRAINING_PROMPT_KEYS`, those it
        sets), which its evaluation encodes with; none for a `checkpoint:` run."""
        config = {} if run.train is None else self.training_config(run, seed)
        return {key: config[key] for key in TRAINING_PROMPT_KEYS if key in config}

    def train(self, run: Run, seed: int | None = None) -> None:
        """Train the instance of `run` with `seed`, in one stage or one per difficulty level; its model and digest
        are then what `${runs.NAME}` and its evaluation stand for."""
        config = self.training_config(run, seed)
        name = instance_name(run.name, seed)
        upstream = self._upstream(run.overrides, seed)
        if run.difficulty_levels is None:
            output_dir, stage_digest = self.train_stage(run, name, config, upstream)
        else:
            output_dir, stage_digest = None, None
            for level in run.difficulty_levels:
                stage_name = stage_instance(name, level)
                stage_dir = str(self.layout_of(f"runs.{run.name}").run_dir(stage_name))
                stage_config = staged_config(config, level, stage_dir, None if output_dir is None else str(output_dir))
                output_dir, stage_digest = self.train_stage(run, stage_name, stage_config, upstream, stage_digest)
        self.paths[f"runs.{name}"] = str(output_dir)
        self.digests[f"runs.{name}"] = stage_digest

    def train_stage(
        self,
        run: Run,
        name: str,
        config: dict[str, Any],
        upstream: dict[str, str],
        previous_digest: str | None = None,
    ) -> tuple[Path, str]:
        """One `llamafactory-cli train` of `config` as stage `train-<name>`, skipped when done and resumed from its
        last checkpoint when interrupted; `previous_digest`: the digest of the stage it continues. Returns its
        output_dir and digest."""
        data = training_data(config)
        stage = f"train-{name}"
        stage_digest = digest(config, upstream, data, *([] if previous_digest is None else [previous_digest]))
        output_dir = Path(config["output_dir"])
        if self.markers.matches(stage, stage_digest):
            self.announce(f"train {name}: done, skipped ({output_dir})")
            return output_dir, stage_digest
        checkpoint = last_checkpoint(output_dir) if self.markers.matches(stage, stage_digest, "started") else None
        if checkpoint is not None:
            config["resume_from_checkpoint"] = str(checkpoint)
            self.announce(f"train {name}: resuming from {checkpoint}")
        else:
            if output_dir.exists():
                print(f"    {output_dir} holds no checkpoint of this config; training from the start", flush=True)
                shutil.rmtree(output_dir)
            self.announce(f"train {name}: llamafactory-cli train ({run.train})")
        config_path = self.layout_of(f"runs.{run.name}").config(stage)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.markers.write(stage, stage_digest, "started")
        log_path = self.layout_of(f"runs.{run.name}").log(stage)
        returncode = stream(
            [executable("llamafactory-cli"), "train", str(config_path)], env=os.environ, log_path=log_path
        )
        if returncode != 0:
            raise StageError(
                f"training run {name!r} failed (llamafactory-cli exit status {returncode}); "
                f"see {log_path}. Re-running `ue-dpo run` resumes from its last checkpoint."
            )
        if not (output_dir / "trainer_state.json").is_file():
            raise StageError(
                f"training run {name!r} exited 0 but wrote no {output_dir / 'trainer_state.json'}; see {log_path}"
            )
        config.pop("resume_from_checkpoint", None)
        self.markers.write(
            stage,
            stage_digest,
            run=run.name,
            config_file=str(run.train),
            config=config,
            resumed_from=None if checkpoint is None else str(checkpoint),
            seeds=training_seeds(config),
            data=data,
            versions=package_versions(),
            machine=this_machine(),
            **({} if previous_digest is None else {"continues": previous_digest}),
        )
        return output_dir, stage_digest

    def evaluation_settings(self) -> dict[str, Any]:
        evaluation, judge = self.experiment.evaluation, self.experiment.judge
        return {
            "launcher": list(evaluation.launcher),
            "model": evaluation.model,
            "tasks": list(evaluation.tasks),
            "protocols": [dataclasses.asdict(protocol) for protocol in evaluation.protocols],
            "model_args": substitute(evaluation.model_args, self.paths),
            "seed": list(evaluation.seed),
            "env": substitute(evaluation.env, self.paths),
            "judge": judge.__dict__,
            # only when set, so that the digests of existing ue_dpo_hf evaluations stay what they were
            **({} if evaluation.server is None else {"server": evaluation.server.__dict__}),
        }

    def lmms_eval_entries(
        self,
        name: str,
        settings: dict[str, Any],
        model_args: dict[str, Any] | None = None,
        prompt_args: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One `--config` entry per protocol for the model `name` (a run, or `run@seedS`): its tasks, generation
        kwargs, limit and batch size, into evals/<name>/<its tasks joined by '+'>; `model_args` default to the
        model with evaluation.model_args and, for `ue_dpo_hf`, the run's `prompt_args` (`training_prompt_args`)."""
        if model_args is None:
            model_args = {"pretrained": self.paths[f"runs.{name}"], **settings["model_args"]}
            if settings["model"] == UE_DPO_HF:
                model_args.update(prompt_args or {})
                if "default_system" in model_args:  # a JSON string literal: its commas stay inside its quotes
                    model_args["default_system"] = json.dumps(str(model_args["default_system"]))
        entries = []
        for protocol in (Protocol(**fields) for fields in settings["protocols"]):
            tasks = ",".join(protocol.tasks)
            if Path(tasks).is_dir():
                raise StageError(
                    f"./{tasks} is a folder, so lmms-eval would read `--tasks {tasks}` as a folder of "
                    f"task YAMLs and find none; run `ue-dpo run` from another folder or rename ./{tasks}"
                )
            entry = {
                "model": settings["model"],
                "model_args": ",".join(f"{key}={value}" for key, value in model_args.items()),
                "tasks": tasks,
                "batch_size": protocol.batch_size,
                "log_samples": True,
                "output_path": str(self.eval_dir(name) / protocol.name),
                "seed": settings["seed"],
            }
            if protocol.limit is not None:
                entry["limit"] = protocol.limit
            if protocol.gen_kwargs:
                entry["gen_kwargs"] = ",".join(f"{key}={value}" for key, value in protocol.gen_kwargs.items())
            entries.append(entry)
        return entries

    def judge_env(self) -> dict[str, str]:
        judge = self.experiment.judge
        env = {
            JUDGE_MODEL_ENV: judge.model,
            "OPENAI_BASE_URL": judge.base_url,
            JUDGE_CACHE_DIR_ENV: judge.cache_dir,
            ALLOW_JUDGE_FAILURES_ENV: "true" if judge.allow_failures else None,
        }
        return {key: value for key, value in env.items() if value is not None}

    def evaluate(self) -> None:
        settings = self.evaluation_settings()
        models = [(run, seed, instance_name(run.name, seed)) for run in self.experiment.runs for seed in run.each_seed]
        stage_digests = {
            name: digest(settings, self.digests[f"runs.{name}"], self.paths[f"runs.{name}"]) for _, _, name in models
        }
        pending = [model for model in models if not self.markers.matches(f"eval-{model[2]}", stage_digests[model[2]])]
        if not pending:
            self.announce("evaluate: every run done, skipped")
            return
        self.announce(
            f"evaluate {', '.join(name for _, _, name in pending)} with lmms-eval on {', '.join(settings['tasks'])}"
        )
        if self.experiment.evaluation.server is not None:
            for run, seed, name in pending:
                self.evaluate_served(name, settings, stage_digests[name], self.training_prompt_args(run, seed))
            return
        entries = {}
        for run, seed, name in pending:
            shutil.rmtree(self.eval_dir(name), ignore_errors=True)
            entries[name] = self.lmms_eval_entries(name, settings, prompt_args=self.training_prompt_args(run, seed))
        config_path = self.layout.config("lmms_eval")
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(
            yaml.safe_dump([entry for run_entries in entries.values() for entry in run_entries], sort_keys=False)
        )
        launcher = [executable(settings["launcher"][0]), *settings["launcher"][1:]]
        log_path = self.layout.log("evaluate")
        env = {**os.environ, **settings["env"], **self.judge_env()}
        log_start = log_size(log_path)
        returncode = stream([*launcher, "--config", str(config_path)], env=env, log_path=log_path)
        world_size = logged_world_size(log_since(log_path, log_start))
        failures = []
        for _, _, name in pending:
            try:
                summary = read_lmms_eval_output(self.eval_dir(name), settings["tasks"])
            except StageError as error:
                failures.append(f"{name}: {error}")
                continue
            self.markers.write(
                f"eval-{name}",
                stage_digests[name],
                run=name,
                lmms_eval_entries=entries[name],
                world_size=world_size,
                settings=settings,
                versions=package_versions(),
                machine=this_machine(),
                **summary,
            )
        if failures:
            raise StageError(
                f"evaluation failed (lmms-eval exit status {returncode}; it exits 0 on some failures, so "
                f"its output files were checked): " + "; ".join(failures) + f". See {log_path}"
            )

    def evaluate_served(
        self, name: str, settings: dict[str, Any], stage_digest: str, prompt_args: dict[str, Any]
    ) -> None:
        """One model (a run, or `run@seedS`) through its own inference server: model prepared (merged), server up,
        lmms-eval, server down."""
        server = self.experiment.evaluation.server
        env = {**os.environ, **settings["env"]}
        check_lossless_images(env)
        home = self.layout_of(f"evals.{run_of_instance(name)}")
        served, template, served_digest = prepare_served_model(
            name,
            self.paths[f"runs.{name}"],
            output=home.root,
            markers=self.markers,
            server=server,
            env=env,
            llamafactory_cli=executable("llamafactory-cli"),
            prompt_args=prompt_args,
        )
        shutil.rmtree(self.eval_dir(name), ignore_errors=True)
        log_path = home.log(f"evaluate-{name}")
        server_log = home.log(f"server-{name}")
        print(f"    {name}: serving {served} ({server.command}); log {server_log}", flush=True)
        with served_model(
            server.command, str(served), log_path=server_log, env=env, health_timeout_s=server.health_timeout_s
        ) as base_url:
            entries = self.lmms_eval_entries(
                name, settings, served_model_args(served, base_url, server, settings["model_args"])
            )
            config_path = home.config(f"lmms_eval-{name}")
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(yaml.safe_dump(entries, sort_keys=False))
            launcher = [executable(settings["launcher"][0]), *settings["launcher"][1:]]
            log_start = log_size(log_path)
            returncode = stream(
                [*launcher, "--config", str(config_path)],
                env={**env, **self.judge_env(), **chat_prompt_env(template, prompt_args)},
                log_path=log_path,
            )
        try:
            summary = read_lmms_eval_output(self.eval_dir(name), settings["tasks"])
        except StageError as error:
            raise StageError(
                f"evaluation of {name!r} through its server failed (lmms-eval exit status "
                f"{returncode}): {error}. See {log_path} and {server_log}"
            ) from None
        check_no_failed_requests(summary["samples_files"], name, server_log)
        self.markers.write(
            f"eval-{name}",
            stage_digest,
            run=name,
            lmms_eval_entries=entries,
            world_size=logged_world_size(log_since(log_path, log_start)),
            settings=settings,
            served_model=str(served),
            served_digest=served_digest,
            template=template,
            versions=package_versions(),
            machine=this_machine(),
            **summary,
        )


def log_size(log_path: Path) -> int:
    return log_path.stat().st_size if log_path.is_file() else 0


def log_since(log_path: Path, start: int) -> str:
    """What was written to `log_path` after byte `start` ("" if nothing was ever written)."""
    if not log_path.is_file():
        return ""
    with open(log_path, "rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


def logged_world_size(output: str) -> int | None:
    """The processes lmms-eval ran on, from the line each rank logs ("Running on rank R (local rank L)");
    None when the output holds none (a launcher that lowers lmms-eval's verbosity below INFO)."""
    ranks = {int(rank) for rank in re.findall(r"Running on rank (\d+) \(local rank \d+\)", output)}
    return max(ranks) + 1 if ranks else None


def run_experiment(experiment: Experiment) -> dict[str, Any]:
    return ExperimentRunner(experiment).run()
