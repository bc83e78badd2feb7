"""Transitional alias of kd_lightning.error_report (the module was renamed to say what it does).

Only kd_lightning/cli.py and kd_lightning/ablations/ still import this name; once they import
kd_lightning.error_report, delete this file.
"""
from kd_lightning.error_report import BUG_LINE, USER_ERRORS, report_user_errors, user_error

__all__ = ["BUG_LINE", "USER_ERRORS", "report_user_errors", "user_error"]
