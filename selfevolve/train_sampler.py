"""Length-bucketed batches for small SFT and DPO sets (``train.group_by_length``).

transformers' ``group_by_length`` sorts only within mega-batches of ``min(n // (4 * batch), 50)`` batches: on the
few dozen examples of a round that is 2 batches, so each long example still lands in a batch of short ones and the
batch is padded to it. On the default round's 45 examples (4,850 tokens, 46–406 each) an epoch in batches of 4 came
to 8,235 padded tokens with it (mean of 50 draws; 9,101 unsorted) against 5,973 with this sampler, and a whole
epoch trained 1.91x faster (scripts/bench_train_grouping.py, docs/bench/train_grouping.md).

Here: every epoch, the lengths are jittered by up to ``jitter`` (±10%, so examples of similar length mix
differently), the whole set is sorted and cut into batches, and the batch order is shuffled. The draws come from
torch's global RNG, as in transformers' own samplers, so seeding and resuming behave as they do with those.
"""
from __future__ import annotations


def example_lengths(dataset) -> list[int]:
    """Tokens per example: its ``input_ids`` (SFT), or a DPO pair's prompt and longer answer (TRL's preference
    collator pads the chosen and the rejected sequence, prompt included, to one length)."""
    if "input_ids" in getattr(dataset, "column_names", dataset):  # an HF dataset, or a dict of columns
        return [len(ids) for ids in dataset["input_ids"]]
    return [len(p) + max(len(c), len(r))
            for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]


def length_bucket_sampler(dataset, batch_size: int, jitter: float = 0.1):
    """A torch ``Sampler`` over ``dataset`` (its ``input_ids`` lengths) yielding length-bucketed batches."""
    import torch
    from torch.utils.data import Sampler

    lengths = example_lengths(dataset)

    class LengthBucketSampler(Sampler):
        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self):
            n = len(lengths)
            noise = (torch.rand(n) * 2 - 1) * jitter
            # longest first: the last, partial batch holds the shortest examples, not a long one padded alone
            order = sorted(range(n), key=lambda i: -lengths[i] * (1 + float(noise[i])))
            batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
            return iter([i for b in torch.randperm(len(batches)).tolist() for i in batches[b]])

    return LengthBucketSampler()


def bucketed(trainer_cls):
    """``trainer_cls`` whose training batches come from :func:`length_bucket_sampler`."""

    class Bucketed(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            return length_bucket_sampler(ds, self.args.train_batch_size * self.args.gradient_accumulation_steps)

    Bucketed.__name__ = f"Bucketed{trainer_cls.__name__}"
    return Bucketed
