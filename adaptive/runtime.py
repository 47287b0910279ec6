"""Device, precision, compilation and processes: the one place that decides them, so the same code runs on a
CPU and on GPUs. Also seeding, SIGTERM and the one-line exit. Shared module (identical copies in every
method folder)."""
import contextlib
import os
import signal

import numpy as np
import torch
import torch.distributed as dist

from errors import UserError


def bf16_unusable(device):
    """Why bf16 autocast would not pay off on this device, or None where it does. On a CPU it needs oneDNN's
    bf16 kernels (AVX512-BF16 or AMX): elsewhere bf16 convolutions fall back to a reference kernel about 5x
    slower than fp32."""
    device = torch.device(device)
    if device.type == 'cuda':  # emulated bf16 (V100, T4) is slower than fp32
        return None if torch.cuda.is_bf16_supported(including_emulation=False) else 'this GPU has no bf16 units'
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return 'this CPU has no AVX512-BF16 or AMX, so oneDNN has no bf16 kernels (bf16 would be ~5x slower than fp32)'
    return None


class Runtime:
    """Device, precision, compilation and processes. Under torchrun (WORLD_SIZE > 1) every process trains
    on its own device (cuda:LOCAL_RANK, or the CPU with gloo) and gradients are averaged by DDP."""

    def __init__(self, device='auto', amp='auto', compile='off', channels_last=True):
        self.world = int(os.environ.get('WORLD_SIZE', 1))
        self.rank = int(os.environ.get('RANK', 0))
        self.is_main = self.rank == 0
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device == 'cuda' and not torch.cuda.is_available():
            raise UserError('--device cuda: no CUDA device is available (use --device cpu)')
        if amp == 'fp16' and device != 'cuda':
            raise UserError('--amp fp16 needs CUDA; use --amp bf16 or off on the CPU')
        if compile == 'reduce-overhead' and device != 'cuda':
            raise UserError('--compile reduce-overhead (CUDA graphs) needs CUDA; use --compile default on the CPU')
        if device == 'cuda' and self.world > 1:
            device = f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}'
            torch.cuda.set_device(device)
        if amp == 'auto':  # decided on this process's own device
            amp = 'off' if bf16_unusable(device) else 'bf16'
        self.device = torch.device(device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
        self.precision = amp
        self.dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'off': None}[amp]
        self.scaler = torch.amp.GradScaler('cuda') if amp == 'fp16' else None
        self.compile_mode = compile
        # channels_last: 1.2-1.5x faster convolutions on CPU (oneDNN) and on CUDA tensor cores
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32

    # ---- processes (all no-ops in a single process)
    def all_gather(self, t):
        """Concatenation over processes, rank-major."""
        if self.world == 1:
            return t
        out = torch.empty((self.world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        gather = getattr(dist, 'all_gather_single', None) or dist.all_gather_into_tensor  # torch < 2.14: the latter
        gather(out, t.contiguous())
        return out

    def all_reduce(self, t, op='sum'):
        if self.world > 1:
            dist.all_reduce(t, {'sum': dist.ReduceOp.SUM, 'min': dist.ReduceOp.MIN, 'max': dist.ReduceOp.MAX}[op])
        return t

    def mine(self, t):
        """This process's rows of a tensor gathered with all_gather."""
        return t.view(self.world, -1, *t.shape[1:])[self.rank]

    def gather_objects(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def ddp(self, model):
        """DDP wrapper (gradients averaged in backward; BatchNorm statistics are each process's own, rank 0's
        broadcast at every forward; no SyncBatchNorm), or the model itself in a single process."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    # ---- precision and compilation
    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model):
        return model.to(self.device, memory_format=self.memory_format)

    def compile(self, model, backend='inductor'):
        """The module that runs forward passes: `model` itself, or a compiled wrapper sharing its parameters
        (checkpoints always save `model`, whose state_dict keys carry no compile prefix)."""
        if self.compile_mode == 'off':
            return model
        return torch.compile(model, backend=backend, mode=None if self.compile_mode == 'default' else self.compile_mode)

    def step_begin(self):
        """Once per training iteration: CUDA graphs (reduce-overhead) may reuse the previous step's output
        memory from here on."""
        if self.compile_mode == 'reduce-overhead':
            torch.compiler.cudagraph_mark_step_begin()

    def backward_and_step(self, loss, optimizer):
        """zero_grad, backward, optimizer step (through the fp16 gradient scaler where one is in use)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def describe(self):
        procs = f', {self.world} processes' if self.world > 1 else ''
        if self.device.type == 'cuda':
            return f'cuda ({torch.cuda.get_device_name(self.device)}{procs})'
        return f'cpu ({torch.get_num_threads()} threads{procs})'


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


class StopRequest:
    """SIGTERM (a scheduler's pre-emption, torchrun forwarding it) asks for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        self.requested = True

