"""Route the engine's `logging` records (logger "backend") into tritonserver's log."""
import logging

import triton_python_backend_utils as pb_utils


class TritonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = f"{record.name}: {self.format(record)}"
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def route_engine_logs_to_triton() -> None:
    logger = logging.getLogger("backend")
    if not any(isinstance(h, TritonLogHandler) for h in logger.handlers):
        logger.addHandler(TritonLogHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
