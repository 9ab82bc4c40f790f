#!/usr/bin/env bash
# Redaction peers in one run (issue 16): scrubadub and Presidio (installed
# from PyPI into a venv by this script) and kmsd's `kmsctl redact`, over the
# development corpus, each scored by the shared scorer (recall, keep) and
# timed in-process (MB/s, the Python tools' imports and model set-up
# excluded; kmsd over the corpus repeated 40 times, process start
# included). Not run in CI: it downloads ~200 MB of wheels.
#
#   benches/redaction-peers.sh [CORPUS.jsonl]
#
# Environment: PEERS_VENV (default target/redaction-peers-venv),
# EVAL (default ../shared/tools/eval-redaction), PYTHON (default python3).
#
# Presidio: its spaCy model (en_core_web_sm) is not on PyPI (it is a GitHub
# release download); where only PyPI is reachable the script runs Presidio's
# AnalyzerEngine with a blank spaCy English pipeline, i.e. its pattern
# recognizers (credit card, IBAN, e-mail, phone, crypto, IP, URL, UK NHS,
# US SSN…) with context words but no NER (so no PERSON / LOCATION), and says
# so in its output. With PRESIDIO_MODEL=en_core_web_lg (or _sm) installed it
# uses that model instead.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
corpus=${1:-$here/../shared/testdata/redaction-dev.jsonl}
eval_tool=${EVAL:-$here/../shared/tools/eval-redaction}
venv=${PEERS_VENV:-$here/target/redaction-peers-venv}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "scrubadub==2.0.1" "presidio-analyzer==2.2.366" >&2

cat > "$work/peer.py" <<'PY'
"""One peer as a line filter: stdin lines -> redacted lines on stdout.
Processing time (imports and set-up excluded) goes to the file in $PEER_TIMING."""
import os, sys, time
which = sys.argv[1]
lines = sys.stdin.read().split("\n")
if lines and lines[-1] == "":
    lines.pop()
if which == "scrubadub":
    import scrubadub
    scrubber = scrubadub.Scrubber()
    clean = scrubber.clean
    note = "scrubadub 2.0.1, default detectors"
else:
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    model = os.environ.get("PRESIDIO_MODEL")
    class Blank(SpacyNlpEngine):
        def load(self):
            self.nlp = {"en": spacy.load(model) if model else spacy.blank("en")}
    engine = Blank(models=[{"lang_code": "en", "model_name": model or "blank"}])
    engine.load()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    note = f"presidio-analyzer 2.2.366, {'model ' + model if model else 'pattern recognizers only (blank spaCy, no NER)'}"
    def clean(text):
        results = analyzer.analyze(text=text, language="en")
        out, last = [], 0
        spans = sorted(((r.start, r.end, r.entity_type) for r in results))
        for s, e, kind in spans:
            if s < last:
                continue
            out.append(text[last:s]); out.append(f"<{kind}>"); last = e
        out.append(text[last:])
        return "".join(out)
t0 = time.perf_counter()
out = [clean(l).replace("\n", " ") for l in lines]
dt = time.perf_counter() - t0
sys.stdout.write("".join(o + "\n" for o in out))
with open(os.environ["PEER_TIMING"], "w") as f:
    f.write(f"{dt} {sum(len(l.encode()) + 1 for l in lines)} {note}\n")
PY

bytes=$(wc -c < "$corpus")
printf '%-12s %8s %8s %10s  %s\n' tool recall keep "MB/s" notes
for peer in scrubadub presidio; do
    summary=$(PEER_TIMING="$work/$peer.t" "$eval_tool" "$corpus" -- "$venv/bin/python" "$work/peer.py" "$peer" | tail -1)
    read -r secs n note < "$work/$peer.t"
    mbs=$("$py" -c "print(f'{$n / $secs / 1e6:.3f}')")
    recall=$(sed -E 's/.*recall=([0-9.]+%).*/\1/' <<< "$summary")
    keep=$(sed -E 's/.*keep=([0-9.]+%).*/\1/' <<< "$summary")
    printf '%-12s %8s %8s %10s  %s\n' "$peer" "$recall" "$keep" "$mbs" "$note"
done

# kmsd: the kmsd-masking example line filter (the code `kmsctl redact` runs,
# without building the whole CLI in release); KMSCTL=path/to/kmsctl uses
# the real CLI instead.
if [ -n "${KMSCTL:-}" ]; then
    kmsd_cmd=("$KMSCTL" redact)
else
    cargo build -q --release -p kmsd-masking --example redact --manifest-path "$here/Cargo.toml" >&2
    kmsd_cmd=("$here/target/release/examples/redact")
fi
summary=$("$eval_tool" "$corpus" -- "${kmsd_cmd[@]}" | tail -1)
"$py" - "$corpus" "$work/big.txt" <<'PY'
import json, sys
text = "".join(json.loads(l)["text"] + "\n" for l in open(sys.argv[1]))
open(sys.argv[2], "w").write(text * 40)
PY
big=$(wc -c < "$work/big.txt")
start=$(date +%s.%N)
"${kmsd_cmd[@]}" < "$work/big.txt" > /dev/null
end=$(date +%s.%N)
mbs=$("$py" -c "print(f'{$big / ($end - $start) / 1e6:.1f}')")
recall=$(sed -E 's/.*recall=([0-9.]+%).*/\1/' <<< "$summary")
keep=$(sed -E 's/.*keep=([0-9.]+%).*/\1/' <<< "$summary")
printf '%-12s %8s %8s %10s  %s\n' kmsd "$recall" "$keep" "$mbs" "${kmsd_cmd[*]##*/} (release), corpus x40 = $big bytes, one core, process start included"
