// placeholder: filled in by issue 4
