"""The length-bucket sampler of train.group_by_length (selfevolve/train_sampler.py): no model needed."""
import torch

from selfevolve.train_sampler import length_bucket_sampler

# the default round's 45 SFT examples (token counts, shuffled)
LENGTHS = [89, 53, 406, 58, 73, 51, 125, 60, 47, 398, 54, 101, 68, 196, 46, 56, 86, 381, 58, 71, 54, 95, 49, 166,
           73, 240, 51, 57, 79, 53, 100, 292, 66, 91, 51, 103, 53, 68, 157, 87, 55, 116, 98, 61, 58]


def padded(order, batch=4):
    return sum(max(LENGTHS[i] for i in order[j:j + batch]) * len(order[j:j + batch])
               for j in range(0, len(order), batch))


def test_every_epoch_is_a_permutation_with_less_padding_than_transformers_grouping():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    torch.manual_seed(0)
    sampler = length_bucket_sampler({"input_ids": [[0] * n for n in LENGTHS]}, 4)
    epochs = [list(sampler) for _ in range(20)]
    assert len(sampler) == 45 and all(sorted(e) == list(range(45)) for e in epochs)
    ours = sum(padded(e) for e in epochs) / 20
    hf = sum(padded(get_length_grouped_indices(LENGTHS, 4)) for _ in range(20)) / 20
    assert ours < 0.8 * hf, (ours, hf)
    assert len({tuple(e) for e in epochs}) > 1  # the batch order (and near-ties) change between epochs


def test_the_same_rng_state_gives_the_same_batches():
    """A resumed run restores torch's RNG: it must see the batches the interrupted one would have."""
    sampler = length_bucket_sampler({"input_ids": [[0] * n for n in LENGTHS]}, 4)
    torch.manual_seed(7)
    first = list(sampler)
    torch.manual_seed(7)
    assert list(sampler) == first


def test_dpo_pairs_are_bucketed_by_prompt_and_longer_answer():
    """A DPO pair pads to its prompt plus its longer answer (TRL's collator pads chosen and rejected sequences to
    one length): batches of similar pairs cost less padding than transformers' random order (what DPO had)."""
    gen = torch.Generator().manual_seed(1)
    pairs = [(n // 2, n - n // 2, int(torch.randint(1, n - n // 2 + 1, (1,), generator=gen))) for n in LENGTHS]
    columns = {name: [[0] * p[k] for p in pairs] for k, name in enumerate(("prompt_ids", "chosen_ids", "rejected_ids"))}
    torch.manual_seed(0)
    sampler = length_bucket_sampler(columns, 4)  # lengths: prompt + max(chosen, rejected) = LENGTHS
    ours = sum(padded(list(sampler)) for _ in range(20)) / 20
    randomly = sum(padded(torch.randperm(45).tolist()) for _ in range(20)) / 20
    assert ours < 0.7 * randomly, (ours, randomly)
