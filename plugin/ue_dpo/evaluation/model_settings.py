"""What the lmms-eval models that `ue-dpo run` evaluates with read of their settings, as lmms-eval 0.7.3 has them.

The experiment file is checked against these, so that a setting no model reads is refused when the file loads rather
than at lmms-eval's first request (`ue_dpo_hf`) or never (lmms-eval's `openai` drops what it does not send). Imports
nothing, so that checking an experiment file loads neither torch nor lmms-eval.
"""

UE_DPO_HF = "ue_dpo_hf"  # ue_dpo.evaluation.model
# LLaMA-Factory's ModelArguments defaults of the image resize before the processor
DEFAULT_IMAGE_MAX_PIXELS = 768 * 768
DEFAULT_IMAGE_MIN_PIXELS = 32 * 32
# The LLaMA-Factory training keys that decide how a prompt and its images are encoded, which `ue-dpo run` gives each
# trained run's evaluation (`ue_dpo_hf` model args of the same names; a served run's folder and chat template).
TRAINING_PROMPT_KEYS = ("template", "default_system", "image_max_pixels", "image_min_pixels", "crop_to_patches")
# `ue_dpo_hf`: every other key stops lmms-eval at the first request.
UE_DPO_HF_GENERATION_KWARGS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k", "until")

SERVED_MODEL = "openai"  # lmms-eval's OpenAI-compatible chat model, the client of every served run
# lmms-eval's chat `openai` (lmms_eval/models/chat/openai.py, generate_until) sends `max_new_tokens` (as max_tokens),
# `temperature`, `top_p`, `seed`, `presence_penalty`, `frequency_penalty` and `n` (which must be 1, its default) to
# the server; it drops every other key (until, num_beams, do_sample, top_k) without a word.
SERVED_GENERATION_KWARGS = ("max_new_tokens", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
# The keyword arguments of lmms-eval's `openai` model (lmms_eval/models/simple/openai.py, OpenAICompatible.__init__,
# and the chat subclass's own); it logs any other one as ignored and goes on.
SERVED_MODEL_ARGS = (
    "model_version",
    "model",
    "base_url",
    "api_key",
    "timeout",
    "retry_backoff_s",
    "max_retries",
    "max_size_in_mb",
    "azure_openai",
    "max_frames_num",
    "video_fps",
    "httpx_trust_env",
    "batch_size",
    "num_concurrent",
    "adaptive_concurrency",
    "adaptive_min_concurrency",
    "adaptive_max_concurrency",
    "adaptive_target_latency_s",
    "adaptive_increase_step",
    "adaptive_decrease_factor",
    "adaptive_failure_threshold",
    "prefix_aware_queue",
    "prefix_hash_chars",
    "pass_video_url",
    "enable_thinking_kwarg",
)

# lmms-eval model -> the generation kwargs it reads; models not listed here are not checked
GENERATION_KWARGS = {UE_DPO_HF: UE_DPO_HF_GENERATION_KWARGS, SERVED_MODEL: SERVED_GENERATION_KWARGS}
