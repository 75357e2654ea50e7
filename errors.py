"""The one exception type users see. The CLI prints its message in one red line and exits 1."""


class EthoprismError(Exception):
    """A problem with the user's input or environment, stated so that they can fix it.

    Messages name the file, video, frame or field at fault and, where there is one, the fix.
    """
