"""The pipeline's stages. Each stage imports the library floor (``specialize.*`` outside this package), never another stage."""
