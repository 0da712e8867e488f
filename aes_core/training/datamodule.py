"""Essay datasets: tokenization at max_length, dynamic padding, length-sorted inference batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aes_core.models.backbone import encode_newlines


class EssayDataset(Dataset):
    """Token ids of each essay (truncated to ``max_length``) and an optional float target."""

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int,
                 targets: Sequence[float] | np.ndarray | None = None,
                 add_newline_tokens: bool = False):
        if targets is not None and len(targets) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        texts = [encode_newlines(str(t), add_newline_tokens) for t in texts]
        enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i]}
        if self.targets is not None:
            item["target"] = float(self.targets[i])
        return item

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


class PadCollate:
    """Dynamic padding: pad every batch to its own longest essay (picklable for DDP spawn)."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for j, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[j, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
            mask[j, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if "target" in batch[0]:
            out["target"] = torch.tensor([b["target"] for b in batch], dtype=torch.float32)
        return out


class LengthSortedBatchSampler(Sampler[list[int]]):
    """Batches of similar length (longest first) so inference pads as little as possible."""

    def __init__(self, lengths: Sequence[int], batch_size: int):
        self.order = np.argsort(-np.asarray(lengths), kind="stable")
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(0, len(self.order), self.batch_size):
            yield self.order[s:s + self.batch_size].tolist()

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return 0 if pid is None else int(pid)


def train_loader(ds: EssayDataset, tokenizer, batch_size: int, seed: int,
                 num_workers: int = 0) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g,
                      collate_fn=PadCollate(pad_id_of(tokenizer)), num_workers=num_workers,
                      persistent_workers=num_workers > 0, drop_last=False)


def eval_loader(ds: EssayDataset, tokenizer, batch_size: int, num_workers: int = 0,
                length_sorted: bool = True) -> DataLoader:
    """Validation/inference loader; length-sorted batches unless a sampler must be injected."""
    collate = PadCollate(pad_id_of(tokenizer))
    if length_sorted:
        return DataLoader(ds, batch_sampler=LengthSortedBatchSampler(ds.lengths, batch_size),
                          collate_fn=collate, num_workers=num_workers)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=num_workers)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, ds: EssayDataset, tokenizer, batch_size: int,
                   device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
                   progress: bool = False) -> np.ndarray:
    """Logits for every essay of ``ds`` in dataset order (length-sorted batches inside)."""
    model.eval().to(device)
    sampler = LengthSortedBatchSampler(ds.lengths, batch_size)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=PadCollate(pad_id_of(tokenizer)))
    out = np.zeros(len(ds), dtype=np.float32)
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="predict", leave=False)
    device_type = torch.device(device).type
    for idx, batch in zip(sampler, it, strict=True):
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(ids, mask)
        out[idx] = logits.float().cpu().numpy()
    return out
