"""Checkpoints and process groups of the trainer.

:class:`Parallel` hides how many processes train and how the weights are spread over them: one
process; several with replicated weights (DDP, through accelerate); several with sharded weights
(FSDP or DeepSpeed ZeRO-3 on GPUs, through accelerate; FSDP2 over gloo on CPUs, where accelerate
has no FSDP: each decoder layer and the model are wrapped with ``fully_shard`` here). Whatever
the case, ``full_state`` gathers the whole weights (a collective: every process calls it) and a
checkpoint holds the trainable weights, optimiser, scheduler and RNG states (CUDA too).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from interp.arch import layers as decoder_layers
from interp.errors import DiskFullError, StaleResultsError, TrainingError
from interp.files import no_space, read_json, save_tensors, write_json


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(list(torch.cuda.get_rng_state_all()))
    return state


def _set_rng_state(cpu: torch.Tensor, cuda: torch.Tensor | None) -> None:
    torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(cuda))


class Parallel:
    def __init__(self, accel, cuda: bool):
        self.accel = accel
        self.world = accel.num_processes
        self.cpu_fsdp = (self.world > 1 and not cuda
                         and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true")

    @property
    def main(self) -> bool:
        return self.accel.is_main_process

    def prepare(self, net, make_optimizer: Callable, hf, micro_batch: int = 1):
        """The training module and its optimiser, wrapped for the processes (``micro_batch``:
        each process's share of a batch, which DeepSpeed needs to be told)."""
        plugin = getattr(self.accel.state, "deepspeed_plugin", None)
        if plugin is not None:
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
        if self.cpu_fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (self.world,))
            for layer in decoder_layers(hf):
                fully_shard(layer, mesh=mesh)
            fully_shard(net, mesh=mesh)
            return net, make_optimizer(net)
        optimizer = make_optimizer(net)
        return self.accel.prepare(net, optimizer)

    def unwrap(self, net):
        return net if self.cpu_fsdp else self.accel.unwrap_model(net)

    def _options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def full_state(self, net) -> dict:
        """Every weight, whole (collective; processes other than the main one may get {})."""
        if self.cpu_fsdp:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            return get_model_state_dict(net, options=self._options())
        return self.accel.get_state_dict(net)

    def optimizer_state(self, net, optimizer) -> dict:
        if self.cpu_fsdp:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            return get_optimizer_state_dict(net, optimizer, options=self._options())
        return optimizer.state_dict()

    def load(self, net, optimizer, weights: dict, optimizer_state: dict) -> None:
        if self.cpu_fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            set_model_state_dict(net, weights, options=StateDictOptions(full_state_dict=True,
                                                                       strict=False))
            set_optimizer_state_dict(net, optimizer, optimizer_state, options=self._options())
            return
        params = dict(self.unwrap(net).named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].dtype))
        optimizer.load_state_dict(optimizer_state)

    def save_checkpoint(self, path: Path, net, optimizer, scheduler, step: int, key: str):
        """Trainable weights, optimiser, scheduler and RNG states; every process calls it (the
        gathering is a collective), the main process writes."""
        state = self.full_state(net)
        opt_state = self.optimizer_state(net, optimizer)
        if not self.main:
            return
        names = {n for n, p in self.unwrap(net).named_parameters() if p.requires_grad}
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(tmp / "trainable.safetensors",
                     {n: v.detach().float() for n, v in state.items() if n in names})
        rng = _rng_state()
        try:
            torch.save({"optimizer": opt_state, "scheduler": scheduler.state_dict(),
                        "rng": rng["cpu"], "cuda_rng": rng.get("cuda")}, tmp / "state.pt")
        except Exception as exc:  # noqa: BLE001 - torch reports a full disk as a RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            if no_space(exc, path.parent):
                raise DiskFullError(f"no space left on {path.parent} while writing "
                                    f"{path.name}/state.pt") from exc
            raise
        write_json(tmp / "progress.json", {"step": step, "fingerprint": key})
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)  # a kill mid-save leaves the previous checkpoint whole

    def load_checkpoint(self, path: Path, net, optimizer, scheduler, key: str) -> int:
        from safetensors.torch import load_file

        progress = read_json(path / "progress.json")
        if progress is None or progress.get("fingerprint") != key:
            raise StaleResultsError(f"{path} holds a checkpoint of a run with other settings or "
                                    "data; rerun with --force to start over, or use another "
                                    "--out")
        try:
            state = torch.load(path / "state.pt", weights_only=True)
            weights = load_file(path / "trainable.safetensors")
        except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many kinds
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise TrainingError(f"the checkpoint {path} is damaged ({first}); delete that "
                                f"directory to train again from step 0") from None
        self.load(net, optimizer, weights, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], state.get("cuda_rng"))
        return int(progress["step"])

