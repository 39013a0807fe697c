"""The exceptions raised for checkpoint files that cannot be read safely.

Every malformed, truncated, oversized or hostile checkpoint file makes the
readers (`load_torch_file`, `load_safetensors`) raise a
`CheckpointFormatError`, never a bare `TypeError`, `KeyError`,
`RecursionError` or the like, so that callers can catch one class. It is a
`ValueError`, as the readers documented before it existed. A file that could
not be opened at all (missing, a directory, no permission) raises the usual
`OSError` instead.
"""

import pickle


class CheckpointFormatError(ValueError):
    """A checkpoint file is malformed, truncated, oversized or hostile.

    The message names the file and what was wrong. Nothing from the file has
    been executed, and the work and memory spent on it were bounded.
    """


class UnsafeCheckpointError(CheckpointFormatError, pickle.UnpicklingError):
    """A checkpoint's pickle asks for code or objects outside the allow-list.

    Raised before anything the file names is called. It is also a
    `pickle.UnpicklingError`, as it was before `CheckpointFormatError`
    existed.
    """
