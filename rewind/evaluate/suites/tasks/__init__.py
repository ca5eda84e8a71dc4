"""lm-eval task YAMLs of the bundled suites; a package only so that the files ship with rewind."""
