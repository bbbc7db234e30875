"""Live A/B in a chain: a LangChain runnable that routes each call to an arm, sticky per key.

    router = LiveRouter.from_registry(
        "checkout-answers",
        {"champion": ("models:/support@champion", 0.9), "challenger": ("models:/support@challenger", 0.1)},
        control="champion", key="user_id")
    chain = prompt | router | StrOutputParser()
    chain.invoke({...}, config={"configurable": {"user_id": "u-42"}})
    router.feedback(router.last_assignment().trace_id, "thumbs_up", 1)

The key (a user or session id) comes from the call's `configurable` or `metadata`; it is
hashed with the experiment's salt to [0, 1) (routing.py), so a user keeps their arm. The
assignment (experiment, arm, registered version) goes on the call's MLflow trace. With a
`Guard`, feedback on its metric runs an always-valid sequential test; when the challenger
is worse, every call goes to the control arm from then on and the event is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from chared_flows.combinations.guard import Guard
from chared_flows.combinations.routing import Split, check_key
from chared_flows.errors import ConfigError, MissingExtraError

try:
    from langchain_core.runnables import Runnable, RunnableConfig
    from langchain_core.runnables.config import ensure_config
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("langchain_core", "langchain") from exc

_REMEMBERED_TRACES = 100_000  # trace id -> arm, for feedback; the oldest are forgotten first


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str
    version: str
    key_hash: str
    control: str = ""
    trace_id: str | None = None  # the MLflow trace (the id feedback takes), when MLflow records
    ids: tuple[tuple[str, Any], ...] = ()  # (recorder name, its id of this call): e.g. a PromptLayer request id


class LiveRouter(Runnable):
    """Routes each call to one of several runnables by sticky traffic shares."""

    def __init__(self, experiment: str, arms: Mapping[str, Runnable], shares: Mapping[str, float], *,
                 control: str, key: str = "user_id", salt: str | None = None,
                 versions: Mapping[str, str] | None = None, recorders: list | None = None,
                 guard: Guard | None = None, guard_metric: str | None = None):
        if not isinstance(experiment, str) or not experiment:
            raise ConfigError(f"experiment name {experiment!r} must be a non-empty string")
        if set(arms) != set(shares):
            raise ConfigError(f"arms {sorted(arms)} and traffic shares {sorted(shares)} name different arms")
        if control not in arms:
            raise ConfigError(f"control arm {control!r} is not one of the arms: {', '.join(arms)}")
        if guard is not None and (guard_metric is None or guard.control != control or guard.challenger not in arms):
            raise ConfigError("a guard needs guard_metric (the feedback name it watches), control = the router's "
                              "control arm and a challenger among the arms")
        self.experiment, self.control, self.key = experiment, control, key
        self.split = Split(salt or experiment, dict(shares))
        self.arms = dict(arms)
        self.versions = {a: (versions or {}).get(a) or getattr(r, "registry_source", None) or "" for a, r in arms.items()}
        self.recorders = list(recorders) if recorders is not None else []
        self.guard, self.guard_metric = guard, guard_metric
        self.stopped: dict | None = None  # set once a guard sent all traffic back to the control arm
        self._trace_arms: OrderedDict[str, Assignment] = OrderedDict()
        self._local = threading.local()
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, experiment: str, arms: Mapping[str, tuple[str, float]], *, control: str,
                      llm_class: Any = None, tracking_uri: str | None = None, **options: Any) -> "LiveRouter":
        """Arms from registry URIs: {"champion": ("models:/NAME@champion", 0.9), ...}; MLflow records by default."""
        if llm_class is None:
            from chared_flows.integrations.langchain import CharEDLLM as llm_class
        models = {arm: llm_class.from_registry(uri, tracking_uri=tracking_uri) for arm, (uri, _share) in arms.items()}
        if "recorders" not in options:
            from chared_flows.combinations.live_mlflow import MlflowRecorder

            options["recorders"] = [MlflowRecorder(tracking_uri)]
        return cls(experiment, models, {arm: share for arm, (_uri, share) in arms.items()}, control=control,
                   **options)

    # --- routing -------------------------------------------------------------

    def key_of(self, config: RunnableConfig | None) -> str:
        config = ensure_config(config)
        for section in ("configurable", "metadata"):
            value = (config.get(section) or {}).get(self.key)
            if value is not None:
                return check_key(str(value))
        raise ConfigError(f"the call has no routing key {self.key!r}; pass it as "
                          f"config={{'configurable': {{'{self.key}': USER_OR_SESSION_ID}}}}")

    def arm_for(self, key: str) -> str:
        return self.control if self.stopped is not None else self.split.arm_of(key)

    def assign(self, key: str) -> Assignment:
        arm = self.arm_for(key)
        key_hash = hashlib.sha256(f"{self.split.salt}\0{key}".encode("utf-8")).hexdigest()[:16]
        return Assignment(self.experiment, arm, self.versions[arm], key_hash, self.control)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        assignment = self.assign(self.key_of(config))
        config = ensure_config(config)
        metadata = {**(config.get("metadata") or {}), "chared_experiment": assignment.experiment,
                    "chared_arm": assignment.arm, "chared_version": assignment.version}
        inner = {**config, "metadata": metadata}
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(r.call(assignment, input)) for r in self.recorders]
            output = self.arms[assignment.arm].invoke(input, inner, **kwargs)
            for handle in handles:
                handle["output"] = output if isinstance(output, (str, dict)) else str(output)
        ids = tuple((r.name, h.get("trace_id") or h.get("id")) for r, h in zip(self.recorders, handles))
        trace_id = next((i for _name, i in ids if i is not None), None)
        assignment = Assignment(**{**assignment.__dict__, "trace_id": trace_id, "ids": ids})
        if trace_id is not None:
            self._remember(str(trace_id), assignment)
        self._local.last = assignment
        return output

    def last_assignment(self) -> Assignment | None:
        """This thread's last routed call: its arm, version and trace id (for feedback)."""
        return getattr(self._local, "last", None)

    def _remember(self, trace_id: str, assignment: Assignment) -> None:
        with self._lock:
            self._trace_arms[trace_id] = assignment
            while len(self._trace_arms) > _REMEMBERED_TRACES:
                self._trace_arms.popitem(last=False)

    # --- feedback and the guard -------------------------------------------------

    def feedback(self, trace_id: Any, name: str, value: Any, source: str | None = None) -> None:
        """Send a user's score on a routed call (its trace id) to every recorder; the guard watches its metric.

        Each recorder gets its own id of that call (an MLflow trace id, a PromptLayer request id);
        a call this router does not remember goes to every recorder under the id given.
        """
        assignment = self._trace_arms.get(str(trace_id))
        ids = dict(assignment.ids) if assignment is not None else {}
        for recorder in self.recorders:
            recorder.feedback(ids.get(recorder.name, trace_id), name, value, source)
        if self.guard is not None and name == self.guard_metric and assignment is not None:
            self.observe(assignment.arm, float(value))

    def observe(self, arm: str, value: float) -> None:
        """Feed the guard one value of its metric (feedback() does this for routed calls)."""
        if self.guard is not None and self.guard.observe(arm, value):
            self.stopped = {"event": "guard stopped the rollout", "experiment": self.experiment,
                            "challenger": self.guard.challenger, "control": self.control,
                            "metric": self.guard_metric, "margin": self.guard.margin, "alpha": self.guard.alpha,
                            **(self.guard.stopped_at or {})}
            for recorder in self.recorders:
                if hasattr(recorder, "event"):
                    recorder.event(self.experiment, self.stopped)
