"""Errors that mean "the input is wrong", as opposed to a bug in the library.

Code that validates user input (config values, data locations, checkpoint files) raises a `UserError`;
the command-line entry points print it as one line and exit with code 2. Anything else that escapes is a
bug and keeps its traceback. The subclasses also derive from the matching built-in, so callers that catch
`ValueError` or `FileNotFoundError` keep working.
"""


class UserError(Exception):
  """A mistake in what the user asked for or pointed at (reported as one line, exit code 2)."""


class ConfigError(UserError, ValueError):
  """A config value, config argument or option combination that cannot work."""


class MissingInputError(UserError, FileNotFoundError):
  """A dataset, checkpoint or file that is not where the config says it is."""


class MissingDependencyError(UserError, ImportError):
  """An optional extra of the package that the requested feature needs is not installed."""


class DataError(UserError, ValueError):
  """A dataset that cannot be read the way the config says (unknown split, no images, undecodable file)."""


class CheckpointError(UserError, ValueError):
  """A checkpoint file that does not match the model (wrong architecture, keys or shapes)."""


class TrainingDiverged(UserError, RuntimeError):
  """The loss became NaN/inf: the run stopped at its last good checkpoint (the recipe needs changing)."""


class WorkdirBusy(UserError, RuntimeError):
  """The workdir is held by another live run (one writer per workdir: `train/workdir_lock.py`)."""
