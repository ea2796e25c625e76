"""The demo: synthetic scenes (:mod:`clipseg.demo.scenes`), the small demo vocabulary
(:mod:`clipseg.demo.vocabulary`) and the shipped demo checkpoint (``checkpoint/``, loadable as
``"demo"``)."""
