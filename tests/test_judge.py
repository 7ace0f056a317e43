"""The LLM-judge client against a scripted loopback server: retries, failures, cache, key hygiene, threads."""

import logging
import threading
import time

import pytest

from judge_server import ScriptedBody, ScriptedHTTPError, ScriptedJudgeServer, last_user_text, unused_loopback_url
from ue_dpo.benchmarks.judge import (
    CACHE_FILENAME,
    JudgeClient,
    JudgeConfig,
    JudgeConfigError,
    JudgeUnavailableError,
    judge_cache_key,
)

SECRET_KEY = "sk-test-0123456789abcdefSECRET"


def user(text):
    return [{"role": "user", "content": text}]


def echo(payload):
    return "echo: " + last_user_text(payload)


def make_client(server_url, **options):
    settings = {"model": "judge-model", "base_url": server_url, "timeout": 5}
    settings.update(options)
    return JudgeClient(JudgeConfig(**settings))


def test_retries_on_5xx_then_succeeds():
    with ScriptedJudgeServer(echo, fail_first=2, fail_status=503) as server:
        client = make_client(server.base_url, max_retries=3)
        result = client.complete_result(user("hello"))
        assert server.request_count == 3
    assert result.content == "echo: hello"
    assert result.attempts == 3
    assert result.judge_model == "judge-model"
    assert result.served_model == "judge-model"
    assert client.judge_failures == 0


def test_retries_on_429_then_succeeds():
    replies = iter([ScriptedHTTPError(429, retry_after="0"), "Rating: 5"])
    with ScriptedJudgeServer(lambda payload: next(replies)) as server:
        assert make_client(server.base_url, max_retries=1).complete(user("q")) == "Rating: 5"
        assert server.request_count == 2


def test_request_payload_is_the_official_shape():
    with ScriptedJudgeServer(echo) as server:
        make_client(server.base_url).complete(user("x"))
        make_client(server.base_url, max_tokens=64).complete(user("y"), temperature=0.5)
    assert server.payloads[0] == {"model": "judge-model", "messages": user("x"), "temperature": 0.0}
    assert server.payloads[1] == {"model": "judge-model", "messages": user("y"), "temperature": 0.5, "max_tokens": 64}
    assert server.authorization_headers == [None, None]


def test_down_server_raises_a_clear_error_after_retries():
    with ScriptedJudgeServer(echo, fail_first=100) as server:
        client = make_client(server.base_url, max_retries=2)
        with pytest.raises(JudgeUnavailableError) as caught:
            client.complete(user("hello"))
        assert server.request_count == 3
    message = str(caught.value)
    assert f"{server.base_url}/chat/completions" in message
    assert "'judge-model'" in message
    assert "after 3 attempts" in message
    assert "HTTP 500" in message
    assert "raise `max_retries` or `timeout`, or use `allow_failures` to count them instead" in message
    assert caught.value.attempts == 3
    assert client.judge_failures == 1


def test_connection_refused_raises_a_clear_error_after_retries():
    url = unused_loopback_url()
    client = make_client(url, max_retries=1)
    with pytest.raises(JudgeUnavailableError) as caught:
        client.complete(user("hello"))
    assert url in str(caught.value)
    assert "after 2 attempts" in str(caught.value)
    assert "connection failed" in str(caught.value)


def test_client_errors_are_not_retried():
    with ScriptedJudgeServer(
        lambda payload: ScriptedHTTPError(400, '{"error": {"message": "context too long"}}')
    ) as server:
        with pytest.raises(JudgeUnavailableError, match="HTTP 400.*context too long"):
            make_client(server.base_url, max_retries=4).complete(user("hello"))
        assert server.request_count == 1


def test_allow_failures_records_and_counts_failures():
    def reply(payload):
        return ScriptedHTTPError(500) if "bad" in last_user_text(payload) else echo(payload)

    with ScriptedJudgeServer(reply) as server:
        client = make_client(server.base_url, max_retries=1, allow_failures=True)
        results = client.complete_many([user("good one"), user("bad one"), user("good two")])
        # 1 request per good prompt, 2 attempts for the bad one.
        assert server.request_count == 4
    assert [result.content for result in results] == ["echo: good one", None, "echo: good two"]
    assert [result.ok for result in results] == [True, False, True]
    assert "HTTP 500" in results[1].error and "after 2 attempts" in results[1].error
    assert results[1].judge_model == "judge-model"
    assert client.judge_failures == 1
    assert client.stats == {"http_requests": 4, "cache_hits": 0, "judge_failures": 1, "rejected_replies": 0}
    # `complete` has no text to return, so it raises even with allow_failures.
    with pytest.raises(JudgeUnavailableError):
        make_client(unused_loopback_url(), max_retries=0, allow_failures=True).complete(user("x"))


def test_rejected_key_is_a_config_error_even_with_allow_failures():
    # OpenAI's 401 body quotes a masked key; the message must not carry key material.
    body = '{"error": {"message": "Incorrect API key provided: ' + SECRET_KEY + '. See your dashboard."}}'
    with ScriptedJudgeServer(lambda payload: ScriptedHTTPError(401, body)) as server:
        client = make_client(server.base_url, api_key=SECRET_KEY, allow_failures=True, max_retries=3)
        with pytest.raises(JudgeConfigError) as caught:
            client.complete_many([user("a")])
        assert server.request_count == 1
    assert "HTTP 401" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)
    assert "sk-test" not in str(caught.value)


def test_cache_hit_makes_no_new_requests(tmp_path):
    prompts = [user(f"item {index}") for index in range(5)]
    with ScriptedJudgeServer(echo) as server:
        first = make_client(server.base_url, cache_dir=tmp_path).complete_many(prompts)
        assert server.request_count == 5
        rescored = make_client(server.base_url, cache_dir=tmp_path).complete_many(prompts)
        assert server.request_count == 5
        assert [result.content for result in rescored] == [result.content for result in first]
        assert all(result.cached and result.attempts == 0 for result in rescored)
        assert rescored[0].served_model == "judge-model"
        # Temperature, max_tokens and model are part of the key.
        make_client(server.base_url, cache_dir=tmp_path).complete(prompts[0], temperature=0.7)
        make_client(server.base_url, cache_dir=tmp_path, max_tokens=10).complete(prompts[0])
        make_client(server.base_url, cache_dir=tmp_path, model="other-judge").complete(prompts[0])
        assert server.request_count == 8
    assert (tmp_path / CACHE_FILENAME).is_file()


def test_failures_are_not_cached(tmp_path):
    with ScriptedJudgeServer(echo, fail_first=1) as server:
        failed = make_client(server.base_url, cache_dir=tmp_path, max_retries=0, allow_failures=True).complete_result(
            user("q")
        )
        retried = make_client(server.base_url, cache_dir=tmp_path, max_retries=0).complete_result(user("q"))
        assert server.request_count == 2
    assert not failed.ok
    assert retried.content == "echo: q" and not retried.cached


def test_identical_requests_in_one_batch_are_sent_once():
    with ScriptedJudgeServer(echo) as server:
        results = make_client(server.base_url).complete_many([user("same"), user("other"), user("same")])
        assert server.request_count == 2
    assert [result.content for result in results] == ["echo: same", "echo: other", "echo: same"]


def test_cache_key_covers_endpoint_model_messages_temperature_and_max_tokens():
    url = "http://127.0.0.1:8000/v1"
    base = judge_cache_key(url, "m", user("a"), 0, None)
    assert base == judge_cache_key(url, "m", user("a"), 0.0, None)
    assert (
        len(
            {
                base,
                judge_cache_key(url, "m", user("b"), 0, None),
                judge_cache_key(url, "m", user("a"), 0.2, None),
                judge_cache_key(url, "m", user("a"), 0, 512),
                judge_cache_key(url, "n", user("a"), 0, None),
                judge_cache_key(url, "m", [{"role": "system", "content": "a"}], 0, None),
                judge_cache_key("http://127.0.0.1:8001/v1", "m", user("a"), 0, None),
            }
        )
        == 7
    )


def test_the_same_model_name_at_another_endpoint_is_not_answered_from_the_cache(tmp_path):
    # Two servers that both call their model "judge-model" (two vLLM servers serving different weights under one
    # name) sharing one cache file: each reply comes from its own server.
    with (
        ScriptedJudgeServer(lambda payload: "Rating: 1") as first,
        ScriptedJudgeServer(lambda payload: "Rating: 5") as second,
    ):
        assert make_client(first.base_url, cache_dir=tmp_path).complete(user("q")) == "Rating: 1"
        assert make_client(second.base_url, cache_dir=tmp_path).complete(user("q")) == "Rating: 5"
        assert make_client(first.base_url, cache_dir=tmp_path).complete(user("q")) == "Rating: 1"
        assert (first.request_count, second.request_count) == (1, 1)


def test_the_default_cache_is_one_folder_per_endpoint(monkeypatch, tmp_path):
    from ue_dpo.evaluation.judge_settings import task_judge

    monkeypatch.setenv("UE_DPO_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("UE_DPO_JUDGE_CACHE_DIR", raising=False)

    def cache_dir(base_url, model="j"):
        judge = task_judge("mmhal_bench", {"judge_model": model, "judge_base_url": base_url})
        judge.close()
        return judge.config.cache_dir

    local = cache_dir("http://127.0.0.1:8000/v1")
    assert local.parent == tmp_path / "judge"
    assert cache_dir("http://127.0.0.1:8000/v1/") == local == cache_dir("http://127.0.0.1:8000/v1", model="k")
    assert len({local, cache_dir("http://127.0.0.1:8001/v1"), cache_dir("https://api.openai.com/v1")}) == 3
    # An explicit cache folder is used as it is, whatever the endpoint.
    monkeypatch.setenv("UE_DPO_JUDGE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir("http://127.0.0.1:8001/v1") == tmp_path / "mine"


def rating_given(reply):
    return "Rating: " in reply


def test_a_rejected_reply_is_asked_again_and_never_cached(tmp_path):
    replies = iter(["I cannot rate this.", "Still no rating.", "Rating: 4"])
    with ScriptedJudgeServer(lambda payload: next(replies)) as server:
        client = make_client(server.base_url, cache_dir=tmp_path, max_retries=2)
        result = client.complete_result(user("q"), accept=rating_given)
        assert server.request_count == 3
    assert (result.content, result.accepted, result.attempts) == ("Rating: 4", True, 3)
    assert client.stats["rejected_replies"] == 2
    assert len(client.cache) == 1


def test_a_reply_rejected_after_all_retries_is_returned_flagged_and_not_cached(tmp_path, caplog):
    with ScriptedJudgeServer(lambda payload: "I cannot rate this.") as server:
        client = make_client(server.base_url, cache_dir=tmp_path, max_retries=1)
        (result,) = client.complete_many([user("q")], accept=rating_given)
        assert server.request_count == 2
        assert len(client.cache) == 0
        # Scoring again asks again: nothing was cached.
        again = make_client(server.base_url, cache_dir=tmp_path, max_retries=0).complete_result(
            user("q"), accept=rating_given
        )
        assert server.request_count == 3
    assert (result.content, result.accepted, result.ok, result.cached) == ("I cannot rate this.", False, True, False)
    assert not again.accepted and not again.cached
    assert "asking again" in caplog.text


def test_a_cached_reply_that_is_not_accepted_is_asked_again(tmp_path):
    # A cache written before replies were checked may hold an unusable one.
    with ScriptedJudgeServer(lambda payload: "No rating here.") as server:
        make_client(server.base_url, cache_dir=tmp_path).complete(user("q"))
    with ScriptedJudgeServer(lambda payload: "Rating: 2") as server:
        result = make_client(server.base_url, cache_dir=tmp_path).complete_result(user("q"), accept=rating_given)
        assert server.request_count == 1
    assert (result.content, result.cached) == ("Rating: 2", False)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html><body><h1>Welcome to nginx!</h1></body></html>", "text/html; charset=utf-8"),
        ("<html><body>Login required</body></html>", "application/json"),  # a proxy that claims JSON
        ("Bad Gateway", "text/plain"),
        ("", "application/json"),
    ],
)
def test_a_reply_body_that_is_not_json_names_the_server_and_the_fix(body, content_type):
    with ScriptedJudgeServer(lambda payload: ScriptedBody(body, content_type)) as server:
        client = make_client(server.base_url, max_retries=3, allow_failures=True)
        with pytest.raises(JudgeConfigError) as caught:
            client.complete_many([user("q")])
        assert server.request_count == 1  # a misconfiguration, not an outage: not retried, not counted
    message = str(caught.value)
    assert f"LLM judge at {server.base_url}/chat/completions (model 'judge-model')" in message
    assert "not JSON" in message and content_type.split(";")[0] in message
    assert body[:20] in message
    assert "Fix: point `base_url` at the server's OpenAI-compatible API" in message and "/v1" in message
    assert "Expecting value" not in message


def test_api_key_stays_out_of_cache_errors_logs_and_results(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    def reply(payload):
        return (
            ScriptedHTTPError(502, f"upstream said {SECRET_KEY}") if "fail" in last_user_text(payload) else "Rating: 4"
        )

    with ScriptedJudgeServer(reply) as server:
        client = make_client(server.base_url, api_key=SECRET_KEY, cache_dir=tmp_path, max_retries=1)
        results = client.complete_many([user("one"), user("two")])
        with pytest.raises(JudgeUnavailableError) as caught:
            client.complete(user("fail"))
        lenient = make_client(server.base_url, api_key=SECRET_KEY, max_retries=0, allow_failures=True)
        failed = lenient.complete_result(user("fail again"))
    # The key was really sent, so finding it nowhere else means something.
    assert set(server.authorization_headers) == {f"Bearer {SECRET_KEY}"}
    client.close()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path
    assert SECRET_KEY not in str(caught.value) and SECRET_KEY not in repr(caught.value)
    assert "upstream said ***" in str(caught.value)
    assert SECRET_KEY not in caplog.text and "retrying" in caplog.text
    assert SECRET_KEY not in repr(client.config) and SECRET_KEY not in repr(client)
    assert SECRET_KEY not in str(client.config.public_dict()) and client.config.public_dict()["api_key_set"] is True
    assert all(SECRET_KEY not in str(result.to_dict()) for result in [*results, failed])


def test_concurrency_is_bounded_and_order_kept():
    prompts = [user(f"p{index}") for index in range(8)]
    with ScriptedJudgeServer(echo, delay_seconds=0.2) as server:
        started = time.monotonic()
        results = make_client(server.base_url, concurrency=4).complete_many(prompts)
        elapsed = time.monotonic() - started
        assert server.request_count == 8
    assert [result.content for result in results] == [f"echo: p{index}" for index in range(8)]
    assert 2 <= server.max_in_flight <= 4
    assert elapsed < 8 * 0.2  # serially it would take at least 1.6 s


def test_shared_client_is_thread_safe_and_globally_bounded(tmp_path):
    with ScriptedJudgeServer(echo, delay_seconds=0.05) as server:
        client = make_client(server.base_url, concurrency=2, cache_dir=tmp_path)
        outputs = {}

        def worker(thread_index):
            outputs[thread_index] = [client.complete(user(f"t{thread_index}-{n}")) for n in range(5)]

        threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert server.request_count == 20
    assert server.max_in_flight <= 2
    assert outputs == {t: [f"echo: t{t}-{n}" for n in range(5)] for t in range(4)}
    assert len(client.cache) == 20


def test_config_from_environment_and_options():
    environ = {
        "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1/",
        "OPENAI_API_URL": "http://elsewhere/v1",
        "OPENAI_API_KEY": SECRET_KEY,
    }
    config = JudgeConfig.from_options(
        {"model": "m", "max_retries": "2", "allow_failures": "true", "cache_dir": None}, environ
    )
    assert (config.base_url, config.api_key, config.max_retries, config.allow_failures) == (
        "http://127.0.0.1:8000/v1",
        SECRET_KEY,
        2,
        True,
    )
    assert config.cache_dir is None and config.temperature == 0.0
    # lmms-eval's OPENAI_API_URL, which its tasks set to the full chat/completions URL.
    lmms_style = JudgeConfig.from_options({"model": "m"}, {"OPENAI_API_URL": "http://127.0.0.1:9/v1/chat/completions"})
    assert lmms_style.endpoint == "http://127.0.0.1:9/v1/chat/completions"
    assert lmms_style.api_key is None
    assert JudgeConfig.from_options({"model": "m"}, {}).base_url == "https://api.openai.com/v1"
    explicit = JudgeConfig.from_options({"model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key": "k"}, environ)
    assert (explicit.base_url, explicit.api_key) == ("http://127.0.0.1:1/v1", "k")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "`model` is required"),
        ({"model": "m", "temprature": 0}, "Unknown judge option.*temprature.*valid options are"),
        ({"model": "m", "concurrency": 0}, "`concurrency` must be >= 1"),
        ({"model": "m", "max_retries": "many"}, "`max_retries` must be an integer"),
        ({"model": "m", "allow_failures": "maybe"}, "`allow_failures` must be true or false"),
        ({"model": "m", "base_url": "127.0.0.1:8000"}, "must be an http\\(s\\) URL"),
    ],
)
def test_bad_config_gets_a_clear_error(options, message):
    with pytest.raises(JudgeConfigError, match=message):
        JudgeConfig.from_options(options, {})


def test_bad_messages_are_rejected_before_any_request():
    with ScriptedJudgeServer(echo) as server:
        client = make_client(server.base_url)
        with pytest.raises(TypeError, match="non-empty list"):
            client.complete("just a string")
        with pytest.raises(TypeError, match="message 0"):
            client.complete([{"content": "no role"}])
        assert server.request_count == 0


def test_loopback_judge_bypasses_environment_proxies(monkeypatch):
    dead_proxy = unused_loopback_url().removesuffix("/v1")
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with ScriptedJudgeServer(echo) as server:
        assert make_client(server.base_url, max_retries=0).complete(user("direct")) == "echo: direct"
        assert server.request_count == 1


def test_a_task_judge_reads_retries_and_timeout_from_the_environment_and_names_them_when_down(monkeypatch, tmp_path):
    from ue_dpo.evaluation.judge_settings import task_judge

    monkeypatch.setenv("UE_DPO_JUDGE_MAX_RETRIES", "0")
    monkeypatch.setenv("UE_DPO_JUDGE_TIMEOUT", "7.5")
    judge = task_judge(
        "mmhal_bench", {"judge_model": "j", "judge_base_url": unused_loopback_url(), "judge_cache_dir": str(tmp_path)}
    )
    assert (judge.config.max_retries, judge.config.timeout) == (0, 7.5)
    with pytest.raises(JudgeUnavailableError) as caught:
        judge.complete(user("q"))
    message = str(caught.value)
    assert "after 1 attempt:" in message
    assert message.endswith(
        "raise UE_DPO_JUDGE_MAX_RETRIES or UE_DPO_JUDGE_TIMEOUT (seconds), or use UE_DPO_ALLOW_JUDGE_FAILURES=1 "
        "(`judge.allow_failures: true` under `ue-dpo run`) to count them instead (failed items are then left out of "
        "the scores and reported as judge_failures)."
    )
