"""Continue a text with a model trained by demo_tie.py.

    python generate.py --seed_text "the company said" --num_words 30 --seed 1

The checkpoint alone is enough: it carries the vocabulary and the model's sizes.
"""
import signal
import sys

from lm.signals import stop_at_once

if __name__ == '__main__':  # before PyTorch is imported: Ctrl-C ends the process at
    signal.signal(signal.SIGINT, stop_at_once)  # once with a line, not a traceback

import argparse
import os

import torch

import data
from lm.checkpoint import TRAIN_FIRST, CheckpointError, build_model, load_checkpoint
from lm.device import (
    apply_device_flags,
    escape_what_output_cannot_encode,
    quiet_on_closed_pipe,
)
from lm.flags import (
    add_checkpoint_flag,
    add_device_flags,
    checked_number,
    non_negative_int,
    positive_float,
    positive_int,
    seed_value,
)


def build_parser():
    parser = argparse.ArgumentParser(
        description='Generate text with a trained LSTM language model',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--seed_text', type=str, default='',
                        help='Words to continue (empty: start a new sentence)')
    add_checkpoint_flag(parser)
    parser.add_argument('--num_words', type=positive_int, default=50,
                        help='Number of words to generate')
    parser.add_argument('--temperature', type=positive_float, default=1.0,
                        help='Sampling temperature: lower is more conservative')
    parser.add_argument('--top_k', type=non_negative_int, default=0,
                        help='Sample among the k likeliest words only (0: off)')
    parser.add_argument('--top_p', type=checked_number(float, lambda v: 0 < v <= 1, 'in (0, 1]'),
                        default=1.0, help='Nucleus sampling: the likeliest words whose '
                                          'probabilities add up to p (1.0: off)')
    parser.add_argument('--num_samples', type=positive_int, default=1,
                        help='Number of continuations')
    parser.add_argument('--stop_at_eos', action='store_true',
                        help='End each sample at the end of its first sentence')
    parser.add_argument('--seed', type=seed_value, default=None,
                        help='Random seed: the same seed and flags give the same text')
    add_device_flags(parser, amp='Run the model')
    return parser


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
           stop_at_eos=False, generator=None, autocast_dtype=None):
    """Generate `num_words` words after `prompt_ids` (which start with <sos>). <eos> may be
    sampled between words (it does not count as a word); as in training, <sos> is then fed
    after it. Returns the generated ids, <eos> included. Each step feeds one token and
    carries the hidden state, so a word costs the same however long the text is."""
    model.eval()
    device = model.fc.weight.device
    never = torch.zeros(model.fc.out_features, dtype=torch.bool)
    never[[data.PAD, data.SOS]] = True
    hidden = model.init_hidden(1)

    def step(ids, hidden):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(torch.tensor([ids], device=device), hidden)

    logits, hidden = step(prompt_ids, hidden)
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
            logits, hidden = step([data.EOS, data.SOS], hidden)
            last = data.SOS
        else:
            words += 1
            logits, hidden = step([token], hidden)
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


def typed_text(text):
    """Text from the command line read as UTF-8, as training reads files, also where the
    locale made Python decode it as ASCII (LC_ALL=C with PYTHONUTF8=0, where the bytes of
    'café' arrive as surrogates and would be read as <unk>)."""
    return os.fsencode(text).decode('utf-8', errors='replace')


def prompt_ids(words, vocab):
    """The prompt as the model read text in training: <sos> first, and after each typed <eos>
    a <sos>, as after a sampled one. <sos> and <pad> typed are refused (ValueError): they are
    markers the reader adds, not words."""
    typed = {data.SPECIALS[data.SOS], data.SPECIALS[data.PAD]} & set(words)
    if typed:
        raise ValueError(f'{" and ".join(sorted(typed))} in --seed_text: these are markers '
                         'that reading text adds, not words; leave them out (end a sentence '
                         'with <eos>)')
    index = {w: i for i, w in enumerate(vocab)}
    ids, respelled, unknown = data.map_words(words, index, data.is_ptb_style(vocab))
    data.print_mapping_notes(respelled, unknown)
    prompt = [data.SOS]
    for i in ids:
        prompt += [i, data.SOS] if i == data.EOS else [i]
    return prompt


def main(argv=None):
    quiet_on_closed_pipe()
    escape_what_output_cannot_encode()
    parser = build_parser()
    args = parser.parse_args(argv)
    device, autocast_dtype = apply_device_flags(
        parser, args, cpu_amp_refusal=(
            'generation feeds one word at a time, where bfloat16 autocast on a CPU is slower '
            'than float32'))
    try:
        ckpt = load_checkpoint(args.checkpoint, missing_hint=TRAIN_FIRST)
        model = build_model(ckpt, device)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    vocab = ckpt['vocab']
    seed_words = typed_text(args.seed_text).split()
    try:
        prompt = prompt_ids(seed_words, vocab)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1

    generator = torch.Generator()
    generator.manual_seed(args.seed if args.seed is not None else torch.seed())
    for n in range(args.num_samples):
        if args.num_samples > 1:
            print(f'--- sample {n + 1} of {args.num_samples} ---')
        ids = sample(model, prompt, args.num_words, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, stop_at_eos=args.stop_at_eos,
                     generator=generator, autocast_dtype=autocast_dtype)
        print(render(seed_words + [vocab[i] for i in ids]), flush=True)
        if ids == [data.EOS]:
            print(f'note: sample {n + 1} ended at once: the model\'s first word was <eos> (the '
                  'end of the sentence), and --stop_at_eos stops there', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
