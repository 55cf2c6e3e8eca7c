"""nbgrader configuration of the Flows course (nbgrader 0.9.6).

The course root is the directory holding this file (the repository root): nbgrader reads this
file from its working directory, so run nbgrader from here, or use `tools/grade.py`, which does.

    solutions/<ps>/<ps>.ipynb            instructor sources (solutions, visible and hidden tests)
    exercises/<ps>/<ps>.ipynb            student versions, made by `nbgrader generate_assignment`
    grading/submitted/<student>/<ps>/    submissions          (grading/ is not committed)
    grading/autograded/<student>/<ps>/   executed, scored copies
    grading/feedback/<student>/<ps>/     HTML feedback for the student, hidden tests removed
    grading/gradebook.db                 the sqlite gradebook (`python -m flowgrade` creates grading/)

Grading runs the student's code in a sandboxed kernel and every test in a trusted harness
(flowgrade.preprocessor.HarnessExecute, see docs_grading.md): configured here, so nbgrader's own
`autograde` and `generate_feedback` get the same protection as `make grade`.
"""
import os

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, GetGrades,
                                    IgnorePattern, LimitOutput, SaveAutoGrades)

from flowgrade.feedback import SanitizedHTMLExporter
from flowgrade.preprocessor import HarnessExecute

ROOT = os.path.dirname(os.path.abspath(__file__))

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

c.CourseDirectory.root = ROOT
c.CourseDirectory.course_id = "flows"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(ROOT, "grading", "gradebook.db")

# Generated files stay writable (nbgrader's default, 444, makes exercises/ read-only in the
# working tree, which gets in the way of git and of editors).
c.GenerateAssignment.permissions = 644
c.Autograde.permissions = 644
c.GenerateFeedback.permissions = 644

# The split execution: the student's cells in a sandboxed kernel, the tests in the harness.
c.Autograde.autograde_preprocessors = [
    HarnessExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata]
c.HarnessExecute.timeout = 120  # seconds per cell; `python -m flowgrade --cell-timeout` sets its own

# A test cell the student deleted is put back (and run) rather than silently scored from
# nothing; locked cells the student edited are restored from the gradebook anyway.
c.OverwriteCells.add_missing_cells = True

# Feedback pages are sanitised (nh3 and a Content-Security-Policy: no script, no network load);
# the autograded notebooks they render hold no hidden test (HarnessExecute keeps the visible part).
c.GenerateFeedback.exporter_class = SanitizedHTMLExporter
c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor]
