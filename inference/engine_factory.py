"""Which engine serves a model, and building it from the server's settings.

Why a module of its own: the choice must be the same wherever a server starts
(``mlcicd serve``, the gates, the benchmark, the image), and it follows the model:
a directory that carries a CTranslate2 conversion (inference/ct2_model.py) is
served by the CTranslate2 engine, anything else by the torch engine. Naming an
engine that does not fit the model is an error that says which fits, never a
silent switch: a converted candidate served by torch would be another model than
the one the pipeline judged.

Left out: running both engines in one process (two copies of the weights; the
memory target has no room for them).
"""

from __future__ import annotations

from inference.ct2_model import carries_conversion
from inference.engine import Engine
from inference.settings import EngineChoice, ServerSettings


def resolve_engine(choice: EngineChoice, model: str) -> EngineChoice:
    """The engine that serves ``model``; ValueError when ``choice`` does not fit it."""
    converted = carries_conversion(model)
    if choice == EngineChoice.auto:
        return EngineChoice.ctranslate2 if converted else EngineChoice.torch
    if choice == EngineChoice.torch and converted:
        raise ValueError(
            f"model {model!r} is a CTranslate2 conversion; serve it with --engine ctranslate2 "
            "(or auto), or serve its source directory with torch"
        )
    if choice == EngineChoice.ctranslate2 and not converted:
        raise ValueError(
            f"model {model!r} carries no CTranslate2 conversion; make one with "
            "`mlcicd run --convert ctranslate2`, or serve it with --engine torch"
        )
    return choice


def build_engine(settings: ServerSettings) -> Engine:
    """The engine ``settings`` ask for, loaded (not started); errors name the model."""
    chosen = resolve_engine(settings.engine, settings.model)
    if chosen == EngineChoice.ctranslate2:
        return _ctranslate2_engine(settings)
    from inference.loader import load_model
    from inference.torch_engine import TorchEngine

    loaded = load_model(
        settings.model, settings.device.value, settings.dtype.value, settings.model_revision
    )
    return TorchEngine(
        loaded,
        max_batch_size=settings.max_batch_size,
        batch_window_s=settings.batch_window_s,
        queue_cap=settings.queue_cap,
        layer_policy=settings.layer_policy.value,
        decode_step=settings.decode_step.value,
    )


def _ctranslate2_engine(settings: ServerSettings) -> Engine:
    if settings.device.value.startswith("cuda"):
        raise ValueError("the ctranslate2 engine runs on CPU here (device 'cpu' or 'auto')")
    if settings.dtype.value not in ("auto", "fp32"):
        raise ValueError(
            f"the ctranslate2 engine serves the conversion's own weights; dtype "
            f"{settings.dtype.value!r} does not apply (use auto)"
        )
    try:
        import ctranslate2  # noqa: F401
    except ImportError as error:
        raise ValueError(
            "the ctranslate2 engine needs the optional extra: pip install -e '.[peer]'"
        ) from error
    from inference.ct2_engine import CTranslate2Engine
    from inference.ct2_model import load_converted

    return CTranslate2Engine(
        load_converted(settings.model, settings.model_revision),
        max_batch_size=settings.max_batch_size,
        batch_window_s=settings.batch_window_s,
        queue_cap=settings.queue_cap,
    )
