"""flowgrade: autograding for the Flows course with a trust boundary (DESIGN.md section 4b)."""
