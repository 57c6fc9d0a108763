"""The label stage: the teacher chosen (selection), audited against the student (audit), and its scores written."""
