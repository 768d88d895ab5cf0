"""The ragqa web page. ``python app.py`` is ``ragqa serve``: same options, e.g.

    python app.py --port 7860 --model path/to/chinese-alpaca-2-7b.Q4_K.gguf

then open http://127.0.0.1:7860. See README "Web page".
"""

from ragqa.cli import main

if __name__ == "__main__":
    import sys

    main(["serve", *sys.argv[1:]], prog_name="app.py")
