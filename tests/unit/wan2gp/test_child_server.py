"""worker_wgp.child.ChildServer in-process with a scripted backend: one generation at a time, requests answered
while it runs, every request answered (bad lines, bugs), shutdown. The Wan2GP adapter itself is exercised in
tests/integration/wan2gp against the fake Wan2GP checkout."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from worker_wgp import backend, child
from worker_wgp import protocol as p


class ScriptedBackend:
    """Generation blocks until ``release`` is set (or cancel), so tests control when it ends."""

    version = "test"

    def __init__(self) -> None:
        self.model: str | None = None
        self.release = threading.Event()
        self.entered = threading.Event()
        self.freed = 0
        self.fail_with: BaseException | None = None

    def loaded_model(self) -> str | None:
        return self.model

    def generate(self, request_id: str, model: str, settings: dict[str, Any], on_progress: Any,
                 cancel: threading.Event) -> backend.Outcome:
        self.entered.set()
        on_progress(p.Progress(request_id, "inference", 1, 2, 50.0, "step 1"))
        while not self.release.wait(0.01):
            if cancel.is_set():
                raise backend.GenerationFailure("cancelled", "generation cancelled")
        if self.fail_with is not None:
            raise self.fail_with
        switched, self.model = self.model != model, model
        return backend.Outcome([f"/out/{settings['prompt']}.mp4"], switched, 0.5 if switched else 0.0)

    def free(self) -> str | None:
        self.freed += 1
        model, self.model = self.model, None
        return model

    def lora_dir(self, model: str) -> str:
        if model == "bad":
            raise KeyError(model)
        return f"/loras/{model}"

    def memory(self) -> p.Memory:
        return p.Memory(rss_bytes=1)


class Out(io.StringIO):
    """The protocol stream: lines as parsed events, with a way to wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, s: str) -> int:
        with self.changed:
            n = super().write(s)
            self.changed.notify_all()
            return n

    def events(self) -> list[p.Event]:
        return [p.parse_event(line) for line in self.getvalue().splitlines()]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> p.Event:
        with self.changed:
            found: list[p.Event] = []
            self.changed.wait_for(lambda: bool(found.extend(e for e in self.events() if predicate(e)) or found),
                                  timeout)
        assert found, f"no matching event in {self.events()}"
        return found[0]


@pytest.fixture
def server() -> tuple[child.ChildServer, ScriptedBackend, Out]:
    backend, out = ScriptedBackend(), Out()
    return child.ChildServer(backend, out), backend, out


def req(message: p.Request) -> str:
    return p.encode(message)


def test_one_generation_at_a_time_with_requests_answered_meanwhile(server: Any) -> None:
    srv, backend, out = server
    srv.handle_line(req(p.Generate("g1", "i2v_14B", {"prompt": "a"})))
    assert backend.entered.wait(5)
    srv.handle_line(req(p.Generate("g2", "i2v_14B", {"prompt": "b"})))
    srv.handle_line(req(p.Free("f1")))
    srv.handle_line(req(p.Status("s1")))
    busy = out.wait_for(lambda e: isinstance(e, p.Error) and e.id == "g2")
    assert busy.kind == "busy" and "g1 is still running" in busy.message
    assert out.wait_for(lambda e: isinstance(e, p.Error) and e.id == "f1").kind == "busy"
    assert out.wait_for(lambda e: isinstance(e, p.StatusReply)).busy is True
    assert backend.freed == 0  # never freed under a running generation
    backend.release.set()
    result = out.wait_for(lambda e: isinstance(e, p.Result))
    assert result.id == "g1" and result.files == ["/out/a.mp4"] and result.switched and result.load_s == 0.5
    progress = [e for e in out.events() if isinstance(e, p.Progress)]
    assert [e.id for e in progress] == ["g1"]
    srv.handle_line(req(p.Free("f2")))
    freed = out.wait_for(lambda e: isinstance(e, p.Freed))
    assert freed.model == "i2v_14B" and backend.freed == 1


def test_cancel_targets_the_running_generation(server: Any) -> None:
    srv, backend, out = server
    srv.handle_line(req(p.Generate("g1", "t2v", {"prompt": "a"})))
    assert backend.entered.wait(5)
    srv.handle_line(req(p.Cancel("c1", "other")))  # not the running one: ignored
    srv.handle_line(req(p.Cancel("c2", "g1")))
    error = out.wait_for(lambda e: isinstance(e, p.Error))
    assert (error.id, error.kind) == ("g1", "cancelled")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [(MemoryError(), "oom"), (ConnectionError("reset"), "unavailable"), (ValueError("nan"), "failed")],
)
def test_exceptions_from_the_backend_become_error_kinds(server: Any, exc: BaseException, kind: str) -> None:
    srv, backend, out = server
    backend.fail_with = exc
    backend.release.set()
    srv.handle_line(req(p.Generate("g1", "t2v", {"prompt": "a"})))
    error = out.wait_for(lambda e: isinstance(e, p.Error))
    assert (error.id, error.kind) == ("g1", kind) and error.details["exception"] == type(exc).__name__


def test_every_request_is_answered_even_bad_ones(server: Any) -> None:
    srv, _backend, out = server
    srv.handle_line('{"v":1,"op":"generate","id":"g9","model":"t2v"}')
    srv.handle_line("not json at all")
    srv.handle_line(req(p.LoraDir("l1", "bad")))
    srv.handle_line(req(p.LoraDir("l2", "i2v_14B")))
    errors = [e for e in out.events() if isinstance(e, p.Error)]
    assert [(e.id, e.kind) for e in errors] == [("g9", "bad_request"), (None, "bad_request"), ("l1", "internal")]
    assert errors[0].details["key"] == "settings"
    assert out.events()[-1] == p.LoraDirReply("l2", "i2v_14B", "/loras/i2v_14B")


def test_shutdown_cancels_the_generation_frees_and_says_bye(server: Any) -> None:
    srv, backend, out = server
    backend.model = "t2v"
    srv.serve(iter([req(p.Generate("g1", "t2v", {"prompt": "a"})), req(p.Shutdown("x")),
                    req(p.Status("never-read"))]))
    kinds = [type(e).__name__ for e in out.events()]
    assert kinds[-2:] == ["Error", "Bye"] and backend.freed == 1 and srv.stopping
    assert not any(isinstance(e, p.StatusReply) for e in out.events())


def test_end_of_input_releases_the_model(server: Any) -> None:
    srv, backend, out = server
    backend.model = "t2v"
    srv.serve(iter([]))
    assert backend.freed == 1 and out.events() == []


def test_classify_by_type_not_message() -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    assert backend.classify(OutOfMemoryError("whatever")) == "oom"
    assert backend.classify(RuntimeError("CUDA out of memory")) == "failed"  # text alone is not a type
    assert backend.classify(TimeoutError()) == "unavailable"
    assert backend.api_phase("inference_stage_2") == "inference"
    assert backend.api_phase("downloading_output") == "saving"
    assert backend.api_phase("mystery") == "other"
