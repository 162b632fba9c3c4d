#!/usr/bin/env python3
"""Build the embedded default model `builtin:tiny-llama` and its bundled data.

Everything here is generated, so the model, the tokenizer and every data file are
license-clean and reproducible from the seed:

1. A fictional world: people with four attributes (town, trade, pet, colour).
2. Text about that world, split so that no sentence is shared between sets:
   - training corpus: short biographies in three phrasings per fact, sentence order
     shuffled, several biographies per person, plus question-and-answer pairs about
     *half* of the people;
   - calibration set: biographies in a fourth phrasing, and questions about the QA people
     in phrasings used nowhere else (used by quantizers);
   - multiple-choice eval: the questions about the *other* half of the people, with
     four choices (chance 25%);
   - perplexity eval: biographies in a fifth phrasing.
   The model can answer an eval question only by recalling a fact it read in a
   biography and by having learned, from the other half, how questions map to facts.
3. A byte-level BPE tokenizer trained on the training corpus only.
4. A 4-layer Llama (hidden 256, MLP 768: multiples of 128 so group-128 quantization
   applies) trained from scratch with AdamW on 2 CPU threads.

Run:
    python scripts/build_tiny_model.py            # about 12 minutes on 2 CPU cores
    python scripts/build_tiny_model.py --data-only

Outputs (committed):
    compress/assets/tiny-llama/        model.safetensors, config.json, tokenizer files
    compress/assets/data/train.jsonl   training corpus (also the distillation default)
    compress/assets/data/calibration.jsonl
    evals/data/tiny_facts_mc.jsonl, evals/data/tiny_bios_ppl.jsonl
    scripts/results/build_tiny_model.json   training log and held-out accuracy
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "compress" / "assets" / "tiny-llama"
DATA_DIR = ROOT / "compress" / "assets" / "data"
EVAL_DIR = ROOT / "evals" / "data"
RESULTS = ROOT / "scripts" / "results" / "build_tiny_model.json"

# ---------------------------------------------------------------------------- world

FIRST = ["ta", "mi", "ro", "ka", "le", "su", "vo", "ne", "da", "pi", "fe", "lo", "ga", "ri", "bo",
         "ze", "ha", "ju", "wi", "cy"]
FIRST_END = ["nor", "ra", "la", "vi", "ko", "rek", "ma", "de", "lin", "ria"]
LAST_START = ["Bar", "Cor", "Dal", "Fen", "Gar", "Hol", "Kes", "Lor", "Mar", "Nor", "Pel", "Quin",
              "Ros", "Sal", "Tor", "Val", "Wen", "Yor", "Zan", "Bel"]
LAST_END = ["wick", "ton", "ford", "by", "ley", "mont", "ridge", "stead", "well", "croft", "dale",
            "hurst", "more", "wood", "field"]

ATTRIBUTES: dict[str, list[str]] = {
    "town": ["Ashby", "Brell", "Caskin", "Dovel", "Elmhurst", "Farrow", "Glenna", "Harlow",
             "Islet", "Jorvik", "Kelton", "Lunde", "Mirren", "Norwick", "Oakvale", "Pellam",
             "Quarry", "Rilsby", "Stonel", "Tamsin"],
    "trade": ["baker", "farmer", "pilot", "nurse", "teacher", "painter", "sailor", "doctor",
              "tailor", "miner", "singer", "writer", "guard", "cook", "judge", "hunter", "potter",
              "weaver", "carpenter", "fisher"],
    "pet": ["cat", "dog", "parrot", "horse", "rabbit", "goat", "owl", "turtle", "hamster",
            "lizard", "ferret", "pony", "duck", "snake", "mouse", "frog", "goose", "pig", "crab",
            "eagle"],
    "colour": ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver",
               "gold", "pink", "brown", "grey", "violet", "teal", "amber", "crimson", "navy",
               "olive", "ivory"],
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Five phrasings per attribute: three for training, one for calibration, one for the
# perplexity eval. No sentence produced by one set can equal a sentence of another.
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "town": {
        "train": ["{n} lives in {v}.", "{n} has a house in the town of {v}.",
                  "The home of {n} is in {v}."],
        "calibration": ["{n} resides in {v}."],
        "ppl": ["{n} makes a home in {v}."],
    },
    "trade": {
        "train": ["{n} works as {a} {v}.", "{n} earns a living as {a} {v}.",
                  "By trade, {n} is {a} {v}."],
        "calibration": ["{n} is employed as {a} {v}."],
        "ppl": ["{n} has a job as {a} {v}."],
    },
    "pet": {
        "train": ["{n} owns {a} {v}.", "{n} keeps a pet {v}.", "{n} takes care of {a} {v} at home."],
        "calibration": ["{n} looks after {a} {v}."],
        "ppl": ["{n} has {a} {v} as a pet."],
    },
    "colour": {
        "train": ["{n} likes the colour {v}.", "The favourite colour of {n} is {v}.",
                  "{n} always wears {v}."],
        "calibration": ["{n} prefers the colour {v}."],
        "ppl": ["{n} loves the colour {v}."],
    },
}

QUESTIONS = {
    "town": "Question: Where does {n} live?\nAnswer:",
    "trade": "Question: What does {n} do for a living?\nAnswer:",
    "pet": "Question: What pet does {n} have?\nAnswer:",
    "colour": "Question: What is the favourite colour of {n}?\nAnswer:",
}


CALIBRATION_QUESTIONS = {
    "town": "Question: In which town does {n} live?\nAnswer:",
    "trade": "Question: What is the job of {n}?\nAnswer:",
    "pet": "Question: Which animal does {n} keep?\nAnswer:",
    "colour": "Question: Which colour does {n} like best?\nAnswer:",
}


def make_people(rng: random.Random, count: int) -> list[dict[str, str]]:
    names: set[str] = set()
    people = []
    while len(people) < count:
        first = (rng.choice(FIRST) + rng.choice(FIRST_END)).capitalize()
        name = f"{first} {rng.choice(LAST_START)}{rng.choice(LAST_END)}"
        if name in names:
            continue
        names.add(name)
        person = {"name": name}
        for attr, values in ATTRIBUTES.items():
            person[attr] = rng.choice(values)
        people.append(person)
    return people


def sentence(attr: str, template: str, person: dict[str, str]) -> str:
    value = person[attr]
    return template.format(n=person["name"], v=value, a=article(value))


def bio(rng: random.Random, person: dict[str, str], templates: dict[str, list[str]]) -> str:
    attrs = list(ATTRIBUTES)
    rng.shuffle(attrs)
    return " ".join(sentence(a, rng.choice(templates[a]), person) for a in attrs)


def phrasings(*splits: str) -> dict[str, list[str]]:
    return {a: [t for s in splits for t in TEMPLATES[a][s]] for a in ATTRIBUTES}


def build_data(seed: int, people_count: int, bios_per_person: int, mc_people: int) -> dict[str, list[dict]]:
    """Generate the world and split its text into training, calibration and eval sets.

    The first half of the people ("QA people") have their questions answered in the training
    text and their biographies also use the perplexity phrasing; the second half ("held-out
    people") appear in training only through biographies in the three training phrasings.
    Eval sets are about held-out people only, in forms training never shows for them.
    """
    rng = random.Random(seed)
    people = make_people(rng, people_count)
    qa_people, heldout_people = people[: people_count // 2], people[people_count // 2:]

    train: list[dict] = []
    for person in qa_people:
        for _ in range(bios_per_person):
            train.append({"text": bio(rng, person, phrasings("train", "ppl"))})
        for attr in ATTRIBUTES:
            train.append({"text": f"{QUESTIONS[attr].format(n=person['name'])} {person[attr]}"})
    for person in heldout_people:
        for _ in range(bios_per_person):
            train.append({"text": bio(rng, person, phrasings("train"))})
    rng.shuffle(train)

    calibration = [{"text": bio(rng, p, phrasings("calibration"))} for p in people]
    rng.shuffle(calibration)

    mc: list[dict] = []
    for person in heldout_people[:mc_people]:
        for attr, values in ATTRIBUTES.items():
            distractors = rng.sample([v for v in values if v != person[attr]], 3)
            choices = distractors + [person[attr]]
            rng.shuffle(choices)
            mc.append({
                "id": len(mc),
                "attribute": attr,
                "question": QUESTIONS[attr].format(n=person["name"]),
                "choices": choices,
                "label": choices.index(person[attr]),
            })

    ppl_people = rng.sample(heldout_people, min(200, len(heldout_people)))
    ppl = [{"text": bio(rng, p, phrasings("ppl"))} for p in ppl_people]

    # Calibration also needs question-shaped text: quantizers that reconstruct activations
    # (GPTQ, AWQ) calibrated on biographies alone do no better than round-to-nearest on the
    # questions. These ask about the QA people in phrasings that neither training nor eval
    # uses. A separate generator leaves every other set exactly as it was.
    cal_rng = random.Random(seed + 1)
    questions = [{"text": f"{CALIBRATION_QUESTIONS[a].format(n=p['name'])} {p[a]}"}
                 for p in qa_people for a in ATTRIBUTES]
    cal_rng.shuffle(questions)
    calibration = calibration + questions[: len(calibration)]
    cal_rng.shuffle(calibration)
    return {"people": people, "train": train, "calibration": calibration, "mc": mc, "ppl": ppl}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------ tokenizer

# A chat template in the model's own question-and-answer format: a system message on its own
# paragraph, a user turn as written ("Question: ...\nAnswer:"), the assistant's reply after a
# space, turns separated by a blank line. (Under a chat template lm-eval drops a multiple-choice
# task's target delimiter, so the choices follow "Answer:" with no space and this model is at
# chance on them: the bundled chat-templated tasks are generative.) lm-eval's `apply_chat_template` then runs for real on
# the embedded model (saved as chat_template.jinja beside the tokenizer).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ' + message['content'] }}"
    "{%- if not loop.last -%}{{ '\\n\\n' }}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
)


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Like Llama: every encoded text starts with <s>; lm-eval relies on this.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---------------------------------------------------------------------------- model

def mc_accuracy(model, tokenizer, items: list[dict], batch: int = 64) -> float:
    """Accuracy by summed log-likelihood of each choice, as lm-eval's `acc` computes it."""
    import torch

    correct = 0
    requests = []
    for item in items:
        ctx = tokenizer(item["question"])["input_ids"]
        for choice in item["choices"]:
            whole = tokenizer(item["question"] + " " + choice)["input_ids"]
            requests.append((ctx, whole))
    scores = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(requests), batch):
            chunk = requests[i:i + batch]
            width = max(len(w) for _, w in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            for j, (_, whole) in enumerate(chunk):
                ids[j, : len(whole)] = torch.tensor(whole)
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            for j, (ctx, whole) in enumerate(chunk):
                s = 0.0
                for pos in range(len(ctx), len(whole)):
                    s += logp[j, pos - 1, whole[pos]].item()
                scores.append(s)
    for k, item in enumerate(items):
        sc = scores[4 * k: 4 * k + 4]
        correct += int(max(range(4), key=lambda c: sc[c]) == item["label"])
    return correct / len(items)


def train_model(args, tokenizer, train_texts: list[str], mc: list[dict]) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32",
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    docs = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in train_texts]
    rng = random.Random(args.seed)

    def batches():
        while True:
            order = list(range(len(docs)))
            rng.shuffle(order)
            stream = [tok for i in order for tok in docs[i]]
            n = len(stream) // args.seq_len
            chunks = torch.tensor(stream[: n * args.seq_len]).view(n, args.seq_len)
            for i in range(0, n - args.batch + 1, args.batch):
                yield chunks[i:i + args.batch]

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    log = []
    start = time.time()
    it = batches()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        model.train()
        x = next(it)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            entry = {"step": step, "loss": round(loss.item(), 4),
                     "minutes": round((time.time() - start) / 60, 2)}
            if args.eval_every and (step % args.eval_every == 0 or step == args.steps - 1):
                entry["heldout_acc"] = round(mc_accuracy(model, tokenizer, mc[:200]), 3)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    model.eval()
    return {"model": model, "params": params, "log": log,
            "train_minutes": round((time.time() - start) / 60, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--people", type=int, default=1000)
    ap.add_argument("--bios", type=int, default=6, help="training biographies per person")
    ap.add_argument("--mc-people", type=int, default=250, help="held-out people asked about in the MC eval")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--data-only", action="store_true")
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    args = ap.parse_args()

    data = build_data(args.seed, args.people, args.bios, args.mc_people)
    # Experiments (--out elsewhere) never overwrite the committed data files.
    data_dir, eval_dir = (DATA_DIR, EVAL_DIR) if args.out == MODEL_DIR else (args.out.parent / f"{args.out.name}.data",) * 2
    write_jsonl(data_dir / "train.jsonl", data["train"])
    write_jsonl(data_dir / "calibration.jsonl", data["calibration"])
    write_jsonl(eval_dir / "tiny_facts_mc.jsonl", data["mc"])
    write_jsonl(eval_dir / "tiny_bios_ppl.jsonl", data["ppl"])
    print(f"data: {len(data['train'])} training docs, {len(data['calibration'])} calibration docs, "
          f"{len(data['mc'])} multiple-choice items, {len(data['ppl'])} perplexity docs")
    if args.data_only:
        return

    tokenizer = train_tokenizer([row["text"] for row in data["train"]], args.vocab)
    result = train_model(args, tokenizer, [row["text"] for row in data["train"]], data["mc"])
    model = result["model"]
    accuracy = mc_accuracy(model, tokenizer, data["mc"])
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    summary = {
        "seed": args.seed, "people": args.people, "bios_per_person": args.bios,
        "layers": args.layers, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
        "lr": args.lr, "threads": args.threads, "parameters": result["params"],
        "vocab_size": len(tokenizer), "train_minutes": result["train_minutes"],
        "heldout_mc_accuracy": round(accuracy, 4), "mc_items": len(data["mc"]), "log": result["log"],
    }
    results = RESULTS if args.out == MODEL_DIR else args.out.parent / f"{args.out.name}.build.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"held-out multiple-choice accuracy: {accuracy:.3f} on {len(data['mc'])} items; "
          f"{result['params'] / 1e6:.2f}M parameters; trained in {result['train_minutes']} min")


if __name__ == "__main__":
    main()
