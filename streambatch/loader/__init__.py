"""The loader's stages, wired together by ``StreamDataset`` (``streambatch.dataset``)::

    sizing    memory budget -> reader threads, batches ahead, window rows, shuffle piece size;
              describe()'s predictions
    state     resume state (JSON, no pickle) and the shared block that reaches DataLoader workers
    pool      the reader threads: every thread the loader starts (THREAD_PREFIX), Ctrl-C safe
    windows   a window's pieces read into reused buffers by pool tasks
    readers   reader wrappers: checksums once a unit and epoch (VerifyOnce), compressed units
              decoded once for all their parts (WholeUnits)
    batches   batch assembly on pool threads: gather into one buffer, normalise, transform
    tensors   a batch's tensors (per column in process; views of one tensor in a DataLoader worker)
    prefetch  the scheduler: windows ahead, batches in the plan's order, the memory bound
    ring      the device path's reused host batch buffers (pinned for CUDA), inside the budget
    device    device=: one copy thread moves each batch from the ring to the device (own CUDA
              stream, events), overlapping the consumer's step; on-device normalisation

Only ``tensors``, ``ring``, ``device`` (and ``state``'s shared block) import torch; the dataset hands the tensor maker in.
"""
