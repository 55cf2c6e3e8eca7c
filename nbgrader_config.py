"""nbgrader configuration of the Flows course (nbgrader 0.9.6).

The course root is the directory holding this file (the repository root): nbgrader reads this
file from its working directory, so run nbgrader from here, or use `tools/grade.py`, which does.

    solutions/<ps>/<ps>.ipynb            instructor sources (solutions, visible and hidden tests)
    exercises/<ps>/<ps>.ipynb            student versions, made by `nbgrader generate_assignment`
    grading/submitted/<student>/<ps>/    submissions          (grading/ is not committed)
    grading/autograded/<student>/<ps>/   executed, scored copies
    grading/feedback/<student>/<ps>/     HTML feedback for the student, hidden tests removed
    grading/gradebook.db                 the sqlite gradebook (tools/grade.py creates grading/)
"""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402
from nbgrader_hidden import HideHiddenTests  # noqa: E402  (tools/nbgrader_hidden.py)

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

# Per-cell time limit when nbgrader is run by hand. tools/grade.py sets its own
# (--cell-timeout, 60 s by default) and grades in a sandbox with tools/guard.py's preprocessors.
c.Execute.timeout = 120

# A test cell the student deleted is put back (and run) rather than silently scored from
# nothing; locked cells the student edited are restored from the gradebook anyway.
c.OverwriteCells.add_missing_cells = True

# Feedback shows neither the hidden tests nor the tracebacks they produce: nbgrader 0.9.6 puts
# the hidden tests back into the autograded notebook and, by default, into the feedback HTML
# (jupyter/nbgrader#917). HideHiddenTests removes them between GetGrades and the HTML export.
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
