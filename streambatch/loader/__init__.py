"""The loader's stages, wired together by ``StreamDataset`` (``streambatch.dataset``)::

    sizing    memory budget -> reader threads, batches ahead, window rows; describe()'s predictions
    state     resume state (JSON, no pickle) and the shared block that reaches DataLoader workers
    pool      the reader threads: every thread the loader starts (THREAD_PREFIX), Ctrl-C safe
    windows   a window's rows read into reused buffers by pool tasks
    batches   batch assembly on pool threads: gather, normalise, tensors, transform
    prefetch  the scheduler: windows ahead, batches in the plan's order, the memory bound

No stage imports torch: the dataset hands ``torch.from_numpy`` in as the tensor maker.
"""
