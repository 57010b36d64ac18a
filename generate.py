"""Continue a text with a model trained by demo_tie.py.

    python generate.py --seed_text "the company said" --num_words 30 --seed 1

The checkpoint alone is enough: it carries the vocabulary and the model's sizes.
"""
import argparse
import re
import sys

import torch

import data
from checkpoint import CheckpointError, build_model, load_checkpoint
from demo_tie import checked_number, non_negative_int, positive_float, positive_int
from model import pick_device

# PTB writes every number as N: "1990", "3.5", "1,000" and "10-year" all are N (or N-year).
NUMBER = re.compile(r'[+-]?\d[\d,./:]*')


def build_parser():
    parser = argparse.ArgumentParser(description='Generate text with a trained LSTM language model')
    parser.add_argument('--seed_text', type=str, default='', help='Words to continue (empty: start a new sentence)')
    parser.add_argument('--checkpoint', type=str, default='best_model.pt', help='Checkpoint written by demo_tie.py (its --save_path)')
    parser.add_argument('--num_words', type=positive_int, default=50, help='Number of words to generate')
    parser.add_argument('--temperature', type=positive_float, default=1.0, help='Sampling temperature: lower is more conservative')
    parser.add_argument('--top_k', type=non_negative_int, default=0, help='Sample among the k likeliest words only (0: off)')
    parser.add_argument('--top_p', type=checked_number(float, lambda v: 0 < v <= 1, 'in (0, 1]'), default=1.0, help='Nucleus sampling: the likeliest words whose probabilities add up to p (1.0: off)')
    parser.add_argument('--num_samples', type=positive_int, default=1, help='Number of continuations')
    parser.add_argument('--stop_at_eos', action='store_true', help='End each sample at the end of its first sentence')
    parser.add_argument('--seed', type=int, default=None, help='Random seed: the same seed and flags give the same text')
    parser.add_argument('--cuda', action='store_true', help='Use CUDA (same as --device cuda)')
    parser.add_argument('--device', type=str, default='auto', help='auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps')
    return parser


def map_words(words, index):
    """Map seed words onto the vocabulary. Returns (ids, respelled, unknown): PTB is lower
    case and writes numbers as N, so 'The' -> 'the' and '1990' -> 'N' are respelled; a word
    still missing becomes <unk>."""
    ids, respelled, unknown = [], [], []
    for word in words:
        candidates = [word, word.lower(), NUMBER.sub('N', word.lower())]
        found = next((c for c in candidates if c in index), None)
        if found is None:
            unknown.append(word)
            found = data.UNK
        elif found != word:
            respelled.append((word, found))
        ids.append(index[found])
    return ids, respelled, unknown


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Scale by temperature, then keep only the top_k words and the nucleus of mass top_p;
    the rest get -inf."""
    # shifting the largest score to 0 first keeps a tiny temperature from overflowing to inf
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop = mass_before >= top_p  # the likeliest word always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float('-inf'))
    return logits


@torch.no_grad()
def sample(model, prompt_ids, num_words, *, temperature=1.0, top_k=0, top_p=1.0,
           stop_at_eos=False, generator=None):
    """Generate `num_words` words after `prompt_ids` (which start with <sos>). <eos> may be
    sampled between words (it does not count as a word); as in training, <sos> is then fed
    after it. Returns the generated ids, <eos> included. Each step feeds one token and
    carries the hidden state, so a word costs the same however long the text is."""
    model.eval()
    device = model.fc.weight.device
    never = torch.zeros(model.fc.out_features, dtype=torch.bool)
    never[[data.PAD, data.SOS]] = True
    hidden = model.init_hidden(1)
    logits, hidden = model(torch.tensor([prompt_ids], device=device), hidden)
    last, out, words = prompt_ids[-1], [], 0
    while words < num_words:
        # Sampled on the CPU in float64: any temperature > 0 works (MPS has no float64), and
        # a seed gives the same draws on every device.
        scores = logits[0, -1].cpu().double().masked_fill(never, float('-inf'))
        if last == data.SOS:  # training text has no empty sentences
            scores[data.EOS] = float('-inf')
        scores = filter_logits(scores, temperature, top_k, top_p)
        token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
        out.append(token)
        if token == data.EOS:
            if stop_at_eos:
                break
            logits, hidden = model(torch.tensor([[data.EOS, data.SOS]], device=device), hidden)
            last = data.SOS
        else:
            words += 1
            logits, hidden = model(torch.tensor([[token]], device=device), hidden)
            last = token
    return out


def render(words):
    """Words joined by spaces; <eos> ends a line."""
    lines, line = [], []
    for word in words:
        if word == '<eos>':
            lines.append(' '.join(line))
            line = []
        else:
            line.append(word)
    return '\n'.join(lines + [' '.join(line)] if line else lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = pick_device('cuda' if args.cuda else args.device)
    except ValueError as e:
        parser.error(str(e))
    try:
        ckpt = load_checkpoint(args.checkpoint)
        model = build_model(ckpt, device)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    vocab = ckpt['vocab']
    index = {w: i for i, w in enumerate(vocab)}

    seed_words = args.seed_text.split()
    seed_ids, respelled, unknown = map_words(seed_words, index)
    if respelled:
        print('note: PTB is lower-case and writes numbers as N, so the seed was read as: '
              + ', '.join(f'{a} -> {b}' for a, b in respelled), file=sys.stderr)
    if unknown:
        print('note: not in the vocabulary, read as <unk>: ' + ', '.join(unknown), file=sys.stderr)

    generator = torch.Generator()
    generator.manual_seed(args.seed if args.seed is not None else torch.seed())
    for n in range(args.num_samples):
        if args.num_samples > 1:
            print(f'--- sample {n + 1} of {args.num_samples} ---')
        ids = sample(model, [data.SOS] + seed_ids, args.num_words, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, stop_at_eos=args.stop_at_eos,
                     generator=generator)
        print(render(seed_words + [vocab[i] for i in ids]), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
