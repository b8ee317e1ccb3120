"""The torch engine: one worker thread, continuous batching, a KV cache per sequence.

Why this shape: a model forward costs nearly the same for 1 or 16 sequences on
a small model, so the worker keeps one running batch and lets requests join and
leave between decode steps (continuous batching) instead of waiting for a whole
batch to finish. A request arriving while nothing runs waits for company as the
worker's rounds do (inference/engine_worker.py: a burst, and the clients of the
batch that just ended, are prefilled together); one arriving while a batch runs
joins it at the next step.

How the batch is kept: new requests are prefilled together in left-padded
forwards (padding masked, its cache entries zeroed), so a prompt is processed as
a single request would be; the resulting key/value cache is then left-padded
and concatenated onto the running batch's cache (inference/running_batch.py,
inference/kv_cache.py). Decode
steps feed one token per sequence with an attention mask that hides the padding
and per-sequence position ids, so batched greedy output equals one-at-a-time
output. When sequences leave, their rows are dropped and cache columns that are
padding for every remaining row are trimmed.

Speed (CPU, fp32; figures in docs/performance.md, from ``python -m
pipeline.bench.probes``): a step is mostly matrix multiplies, so :meth:`start`
gives each linear-layer shape the layout (dense, oneDNN-packed, weight-first or
oneDNN over the plain weight) and thread count that measures fastest on this
machine, in the model's own call order (inference/layer_tuning.py,
inference/packed_linear.py); a few padded
prefills (cut by cost) replace a forward per distinct prompt length; and GPT-2
models decode with a plain torch step over the same layers and cache instead of
transformers' forward (inference/gpt2_decode.py). All torch work, warm-up
included, runs on the one worker thread: a second thread that has computed keeps
a second CPU thread pool alive, which slows every decode step
(inference/compute_thread.py).

Failure isolation: anything that goes wrong while handling one request (prefill,
sampling, detokenising) finishes that request with ``reason="error"``; a failed
batched forward fails only the requests in that batch. The worker keeps serving.

Left out: paged attention, speculative decoding, prefix caching, beam search;
``torch.compile`` (seconds of compiling per new batch size and cache length, for
a step no faster than packed layers: docs/performance.md, "Directions measured").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from inference.engine import (
    Event,
    FinishEvent,
)
from inference.engine_worker import RoundEnd, WorkerEngine
from inference.gpt2_decode import DecodeStep, Gpt2DecodeStep, gpt2_decode_step, model_decode_step
from inference.layer_tuning import LayerChoice, LayerPolicy, tune_linear_layers
from inference.loader import LoadedModel, eos_token_ids
from inference.packed_linear import PACK_ROWS
from inference.padded_prefill import padded_prefill, prefill_chunks
from inference.running_batch import RunningBatch, columns_to_come
from inference.sampling import accept_next_tokens
from inference.sequence_state import SequenceState

log = logging.getLogger(__name__)


class TorchEngine(WorkerEngine):
    """:class:`inference.engine.Engine` backed by a transformers causal LM."""

    thread_name = "torch-engine"

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int,
        batch_window_s: float,
        queue_cap: int,
        layer_policy: LayerPolicy = "measure",
        decode_step: DecodeStep = "auto",
    ) -> None:
        super().__init__(
            loaded.tokenizer,
            eos_token_ids(loaded.model.generation_config.eos_token_id, loaded.tokenizer),
            max_batch_size=max_batch_size,
            batch_window_s=batch_window_s,
            queue_cap=queue_cap,
        )
        self._loaded = loaded
        self._model = loaded.model
        self._device = torch.device(loaded.device)
        self._batch = RunningBatch()
        self._round_end = RoundEnd()
        self._layer_policy: LayerPolicy = layer_policy
        self._layer_choices: tuple[LayerChoice, ...] = ()
        self._decode_policy: DecodeStep = decode_step
        self._step: Callable[..., torch.Tensor] = functools.partial(model_decode_step, self._model)
        self._threads = torch.get_num_threads()

    # -- Engine protocol: metadata -------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._loaded.name

    @property
    def revision(self) -> str:
        return self._loaded.revision

    @property
    def context_length(self) -> int:
        return self._loaded.context_length

    @property
    def packed_layers(self) -> int:
        """Linear layers running packed for oneDNN (0 before :meth:`start`, or on GPU)."""
        return sum(c.layers for c in self._layer_choices if c.layout == "packed")

    @property
    def threads(self) -> int:
        """Torch threads this engine computes with (its process's OMP_NUM_THREADS, or
        every core), shown in ``/v1/models``: a paired latency gate compares two
        servers only on equal threads (pipeline/gates/cli.py)."""
        return self._threads

    @property
    def layer_choices(self) -> tuple[LayerChoice, ...]:
        """Per linear-layer shape: layout and threads chosen at start (metrics show them)."""
        return self._layer_choices

    @property
    def engine_name(self) -> str:
        return "torch"

    @property
    def decode_step(self) -> str:
        """Which code runs a decode step: ``gpt2`` (inference/gpt2_decode.py) or ``model``."""
        return "gpt2" if isinstance(self._step, Gpt2DecodeStep) else "model"

    # -- worker ------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Choose each layer shape's layout and threads, timed at the rows a decode step
        will have (1, ``PACK_ROWS`` and the largest batch), then serve one short request.

        All of the engine's torch work runs on its one worker thread, warm-up
        included (same code path as serving): a second thread computing with torch
        keeps a second CPU thread pool alive, and that slows every decode step
        (inference/compute_thread.py). Packing changes the model in place (the
        engine owns the model it serves); the layers compute the same function, so
        other users of it are unaffected.
        """
        self._threads = torch.get_num_threads()
        rows = sorted({1, min(self._max_batch, PACK_ROWS), self._max_batch})
        self._layer_choices = tuple(tune_linear_layers(self._model, rows, self._layer_policy))
        plain = gpt2_decode_step(self._model) if self._decode_policy == "auto" else None
        if plain is not None:
            self._step = plain
        log.info("decode step: %s (asked %s)", self.decode_step, self._decode_policy)
        events: list[Event] = []
        self._pending.append(self._warm_up_request(events))
        while self._pending or self._batch.seqs:
            self._iterate(wait=False)
        finish = events[-1] if events else None
        if not isinstance(finish, FinishEvent) or finish.reason == "error":
            raise RuntimeError(f"the warm-up request ended with {finish}")

    def _serve_round(self) -> bool:
        return self._iterate(wait=True)

    def _fail_round(self, message: str) -> None:
        self._batch.fail(message)

    def _fail_held(self, message: str) -> None:
        self._batch.fail(message)

    def _iterate(self, *, wait: bool) -> bool:
        """One scheduling round: admit, then one decode step. False when it is time to exit."""
        admitted: list[SequenceState] = []
        with self._lock:
            if wait:
                while not self._pending and not self._batch.seqs and not self._stopping:
                    self._lock.wait()
                if not self._pending and not self._batch.seqs:
                    return False  # stopping and idle
                if not self._batch.seqs and self._window > 0:
                    self._gather(self._clients_returning)
            room = self._max_batch - len(self._batch.seqs)
            while self._pending and len(admitted) < room:
                admitted.append(self._pending.popleft())
            self._running += len(admitted)
        if admitted:
            self._admit_all(admitted)
        self._batch.drop_finished()
        if self._batch.seqs:
            rows, started = len(self._batch.seqs), time.monotonic()
            self._decode_step()
            self._batch.drop_finished()
            if not self._batch.seqs:
                self._round_end.record(rows, time.monotonic() - started, self._window)
        return True

    def _clients_returning(self) -> list[RoundEnd]:
        """The batch that last ended, while its clients may be on their way back."""
        returning = self._round_end.returning(time.monotonic(), self._window)
        return [self._round_end] if returning else []

    def _admit_all(self, seqs: list[SequenceState]) -> None:
        """Prefill newly admitted requests together, left-padded (inference/padded_prefill.py)."""
        live: list[SequenceState] = []
        for seq in seqs:
            if seq.cancelled:
                seq.finish("cancelled")
            else:
                live.append(seq)
        for chunk in prefill_chunks([len(seq.input_ids) for seq in live]):
            self._admit_group([live[index] for index in chunk])

    def _admit_group(self, group: list[SequenceState]) -> None:
        try:
            logits, cache, mask = self._prefill(group)
        except Exception as error:  # one bad request must not take the others down
            if len(group) > 1:
                for seq in group:  # retry alone, so only the culprit fails
                    self._admit_group([seq])
                return
            group[0].finish("error", f"{type(error).__name__}: {error}")
            return
        accept_next_tokens(group, logits, self._eos_ids)
        keep = [row for row, seq in enumerate(group) if not seq.done]
        if keep:
            self._batch.append([group[row] for row in keep], cache, mask, keep)

    def _prefill(self, group: list[SequenceState]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Logits of each prompt's last position, the cache, and its (B, T) padding mask."""
        for seq in group:
            seq.check_fits()
        spare = columns_to_come(self._batch.seqs + group)
        return padded_prefill(self._model, [seq.input_ids for seq in group], self._device, spare)

    def _decode_step(self) -> None:
        batch = self._batch
        for seq in batch.seqs:
            if seq.cancelled and not seq.done:
                seq.finish("cancelled")
        batch.drop_finished()
        if not batch.seqs or batch.mask is None:
            return
        seqs = list(batch.seqs)
        try:
            logits = self._forward_step(seqs)
        except Exception as error:  # fail only the requests in this forward
            batch.fail(f"batched forward failed: {type(error).__name__}: {error}")
            return
        for callback in self._batch_callbacks:
            with contextlib.suppress(Exception):  # metrics must never stop generation
                callback(len(seqs))
        accept_next_tokens(seqs, logits, self._eos_ids)

    @torch.inference_mode()
    def _forward_step(self, seqs: list[SequenceState]) -> torch.Tensor:
        batch = self._batch
        last = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long, device=self._device)
        positions = torch.tensor(
            [[s.position] for s in seqs], dtype=torch.long, device=self._device
        )
        mask = batch.next_mask()
        logits = self._step(last, positions, mask, batch.cache)  # the cache grows in place
        batch.advance(mask)
        return logits
