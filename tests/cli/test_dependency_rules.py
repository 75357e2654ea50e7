"""DESIGN's dependency rule, read from the source (every import, function-level ones too):
pipeline -> extract, store, probe; probe -> store, and extract only to encode text or a clip;
the wings of probe never import each other; extract never imports probe; store imports neither."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("extract", "store", "probe", "pipeline")
# what probe may take from extract: the text tower and its prompts (query clips are encoded in
# pipeline.clip_query)
PROBE_MAY_USE = {"ethoprism.extract.lvt", "ethoprism.extract.videotext"}
WINGS = ("classify", "retrieve", "localize")


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.startswith("ethoprism.")}


def test_dependencies_point_one_way():
    broken = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            parts = path.relative_to(ROOT).parts
            for module in sorted(imports(path)):
                target = module.split(".")[1]
                if package == "store" and target in ("extract", "probe", "pipeline"):
                    broken.append(f"{where} imports {module}")
                if package == "extract" and target in ("probe", "pipeline"):
                    broken.append(f"{where} imports {module}")
                if package == "probe" and target == "pipeline":
                    broken.append(f"{where} imports {module}")
                if package == "probe" and target == "extract" and module not in PROBE_MAY_USE:
                    broken.append(f"{where} imports {module} (probe may encode text only)")
                wing = parts[1] if len(parts) > 2 and parts[1] in WINGS else None
                other = module.split(".")[2] if module.startswith("ethoprism.probe.") else None
                if wing and other in WINGS and other != wing:
                    broken.append(f"{where} imports {module} (another wing)")
    assert not broken, "\n".join(broken)
