"""Run by torchrun from tests/test_distributed.py: train a tiny DDP model from a StreamDataset.

Every rank records the row ids it was served and its step count per epoch; rank 0 writes
everything (gathered over the process group) to ``--out`` as JSON.  With ``--stop-after S``
every rank stops after S steps of the first epoch and saves ``ds.state_dict()``.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
import torch.distributed as dist

import streambatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--stop-after", type=int, default=0)
    ap.add_argument("--state-in", default=None)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ds = streambatch.StreamDataset(args.data, batch_size=args.batch_size, memory_budget=40_000, return_index=True)
    assert (ds.rank, ds.world_size) == (rank, world)  # taken from torch.distributed
    first_epoch = 0
    if args.state_in:
        ds.load_state_dict(json.loads(Path(args.state_in).read_text()))
        first_epoch = ds.epoch
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.num_workers)
    record = []
    for epoch in range(first_epoch, first_epoch + args.epochs):
        if epoch != first_epoch or not args.state_in:
            ds.set_epoch(epoch)
        ids: list[int] = []
        steps = 0
        for batch in loader:
            loss = model(batch["x"]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ids.extend(batch["_row"].tolist())
            steps += 1
            if args.stop_after and steps == args.stop_after:
                break
        record.append({"epoch": epoch, "ids": ids, "steps": steps})
        if args.stop_after:
            state = ds.state_dict(batches=steps, num_workers=args.num_workers)
            Path(f"{args.out}.state{rank}").write_text(json.dumps(state))
            break
    gathered: list = [None] * world
    dist.all_gather_object(gathered, record)
    if rank == 0:
        Path(args.out).write_text(json.dumps(gathered))
    dist.barrier()
    # Release DDP's reducer (and any gloo work it holds) while the interpreter is fully alive:
    # a 3-rank run once aborted at exit ("terminate called without an active exception").
    del model, opt, loader
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
