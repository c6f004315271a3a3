"""Which teacher layers a student keeps or matches. Indices are 0-based encoder layers.

- `kept_layers`: the teacher layers copied into a student (PKD: the first k; DistilBERT: every other one).
- `uniform_map`: TinyBERT's map for matching: with k = L_T / L_S, student layer i <-> teacher layer
  (i + 1) k - 1, the last layer of each block; for hidden states, student rep i + 1 <-> teacher rep
  (i + 1) k and the embeddings rep 0 <-> rep 0 (task_distill.py's `layers_per_block`).
"""

from __future__ import annotations

from runner.errors import UserError

EVERY_OTHER = "every_other"


def kept_layers(spec: list[int] | str, teacher_layers: int, key: str = "method.student_layers") -> list[int]:
    """The layer list of `spec`: explicit indices, or "every_other" (0, 2, 4, ...)."""
    if spec == EVERY_OTHER:
        return list(range(0, teacher_layers, 2))
    if isinstance(spec, str) or not spec:
        raise UserError(f"{key}={spec!r}: give a list of teacher layers such as [0,1,2] or '{EVERY_OTHER}'")
    bad = [i for i in spec if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < teacher_layers]
    if bad or len(set(spec)) != len(spec) or list(spec) != sorted(spec):
        raise UserError(f"{key}={list(spec)}: give distinct increasing layer indices in [0, {teacher_layers - 1}] "
                        f"(the teacher has {teacher_layers} layers)")
    return list(spec)


def uniform_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map: the teacher layer each student layer matches."""
    if student_layers < 1 or teacher_layers % student_layers:
        raise UserError(f"the uniform layer map needs the teacher's {teacher_layers} layers to split evenly over the "
                        f"student's {student_layers}; set method.layer_map to one teacher layer per student layer")
    k = teacher_layers // student_layers
    return [(i + 1) * k - 1 for i in range(student_layers)]


def check_map(layer_map: list[int], student_layers: int, teacher_layers: int,
              key: str = "method.layer_map") -> list[int]:
    """An explicit map: one teacher layer (0-based) per student layer, increasing, in range."""
    if len(layer_map) != student_layers:
        raise UserError(f"{key}={list(layer_map)} has {len(layer_map)} entries; the student has {student_layers} "
                        "layers (give one teacher layer per student layer)")
    bad = [j for j in layer_map if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < teacher_layers]
    if bad or list(layer_map) != sorted(set(layer_map)):
        raise UserError(f"{key}={list(layer_map)}: teacher layers must be distinct, increasing and in "
                        f"[0, {teacher_layers - 1}]")
    return list(layer_map)


def layer_map(explicit: list[int] | None, student_layers: int, teacher_layers: int) -> list[int]:
    """The explicit map if given (checked), else the uniform one."""
    if explicit:
        return check_map(explicit, student_layers, teacher_layers)
    return uniform_map(student_layers, teacher_layers)
