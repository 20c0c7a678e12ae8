"""Arithmetic in spec values: `filters: $growth * 4`, `filters: make_divisible($in_channels * $expand, 8)`.

    tree = parse("$growth * 4")            # ExpressionError(message, offset) if it is not one
    tree = bind(tree, lookup)              # every $name replaced by a number or a deferred tree
    evaluate(tree, block_inputs)           # -> int or float

The grammar (a tokenizer and a recursive-descent parser, nothing is ever passed to eval):

    expression := product (("+" | "-") product)*
    product    := unary (("*" | "//" | "/" | "%") unary)*
    unary      := "-" unary | atom
    atom       := NUMBER | "$" NAME | FUNCTION "(" expression ("," expression)* ")" | "(" expression ")"

`$in_channels` is the channel count entering the block call the expression is written in
(outside any block: entering the layer whose value it is): it is known only when shapes are
inferred, so an expression that uses it stays a tree (a `Deferred` value) until then. Every
other `$name` is a block argument, bound when the block is expanded. Trees are tuples whose
last item is the token's offset in the text:
("num", value, at), ("arg", name, at), ("in", block_call, at), ("neg", tree, at),
("op", symbol, left, right, at), ("call", function, [trees], at).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cnnspec.spec.schema_errors import did_you_mean


class ExpressionError(Exception):
    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message, self.offset = message, offset


# Bounds no real spec comes near: they turn hostile text into a located error instead of
# a RecursionError, a hang on a 10,000-digit power or an OverflowError.
MAX_LENGTH = 1000            # characters in one expression
MAX_NESTING = 32             # parentheses, unary minus and function calls inside each other
MAX_TOKENS = 256             # numbers, names and operators (each operator is one level of the tree)
MAX_MAGNITUDE = 10**15       # any number met while evaluating (a layer has at most 1e6 filters)


def make_divisible(value, divisor=8, min_value=None):
    """MobileNet's and EfficientNet's channel rounding (torchvision's _make_divisible): the
    nearest multiple of `divisor`, at least `min_value` (default: divisor), and never more
    than 10% below `value`."""
    if divisor <= 0:
        raise ArithmeticError(f"make_divisible's divisor must be > 0, not {divisor}")
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


FUNCTIONS = {  # name -> (fewest arguments, most arguments, function)
    "round": (1, 1, round),          # Python's: halves go to the even neighbour
    "floor": (1, 1, math.floor),
    "ceil": (1, 1, math.ceil),
    "min": (2, 8, min),
    "max": (2, 8, max),
    "make_divisible": (1, 3, make_divisible),
}
IN_CHANNELS = "in_channels"
THIS_LAYER = 0  # the block call of an $in_channels written outside any block: the layer's own input

TOKEN = re.compile(r"(?P<space>\s+)|(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<arg>\$[A-Za-z_]\w*)"
                   r"|(?P<name>[A-Za-z_]\w*)|(?P<op>//|[-+*/%(),])")
LOOKS_LIKE = re.compile(r"\$|^\s*[A-Za-z_]\w*\s*\(|^(?=.*\d)(?=.*[-+*/%()])[\d\s.()+\-*/%eE]+$")


def is_expression(value) -> bool:
    """A string that is meant as arithmetic: it holds a `$`, starts with a function call, or
    is numbers with operators or parentheses (`4 * 16`, `(8)`, `2e1 * 2`). Words like `same`
    or `num_classes` are not."""
    return isinstance(value, str) and bool(LOOKS_LIKE.search(value))


def tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, at = [], 0
    while at < len(text):
        match = TOKEN.match(text, at)
        if not match:
            raise ExpressionError(f"unexpected character {text[at]!r}", at)
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group(), at))
        at = match.end()
    tokens.append(("end", "", len(text)))
    return tokens


class Parser:
    def __init__(self, text: str):
        if len(text) > MAX_LENGTH:
            raise ExpressionError(f"the expression is {len(text):,} characters long (at most "
                                  f"{MAX_LENGTH:,})", 0)
        self.tokens = tokenize(text)
        if len(self.tokens) > MAX_TOKENS:
            raise ExpressionError(f"the expression has {len(self.tokens) - 1} parts (at most "
                                  f"{MAX_TOKENS - 1})", self.tokens[MAX_TOKENS][2])
        self.index = 0
        self.nesting = 0

    def nested(self, at: int):
        """Count one more level of nesting (every recursion of the parser passes here)."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExpressionError(f"nested more than {MAX_NESTING} levels deep", at)

    def peek(self):
        return self.tokens[self.index]

    def take(self, *values):
        token = self.peek()
        if token[0] == "op" and token[1] in values:
            self.index += 1
            return token
        return None

    def expect(self, value: str, what: str):
        if not self.take(value):
            raise ExpressionError(f"expected {what}, found {describe(self.peek())}", self.peek()[2])

    def expression(self):
        tree = self.product()
        while token := self.take("+", "-"):
            tree = ("op", token[1], tree, self.product(), token[2])
        return tree

    def product(self):
        tree = self.unary()
        while token := self.take("*", "//", "/", "%"):
            tree = ("op", token[1], tree, self.unary(), token[2])
        return tree

    def unary(self):
        if token := self.take("-"):
            self.nested(token[2])
            tree = ("neg", self.unary(), token[2])
            self.nesting -= 1
            return tree
        return self.atom()

    def atom(self):
        self.nested(self.peek()[2])
        tree = self.bare_atom()
        self.nesting -= 1
        return tree

    def bare_atom(self):
        kind, value, at = self.peek()
        if kind == "number":
            self.index += 1
            number = float(value) if any(c in value for c in ".eE") else int(value) if len(value) <= 30 else None
            return ("num", checked_number(number, value, at), at)
        if kind == "arg":
            self.index += 1
            return ("arg", value[1:], at)
        if kind == "name":
            if value not in FUNCTIONS:
                hint = did_you_mean(value, FUNCTIONS) or f"; functions: {', '.join(FUNCTIONS)}"
                raise ExpressionError(f"unknown function '{value}'{hint} (arguments are written $name)", at)
            self.index += 1
            self.expect("(", f"'(' after {value}")
            arguments = [self.expression()]
            while self.take(","):
                arguments.append(self.expression())
            self.expect(")", "',' or ')'")
            fewest, most, _ = FUNCTIONS[value]
            if not fewest <= len(arguments) <= most:
                wanted = str(fewest) if fewest == most else f"{fewest} to {most}"
                raise ExpressionError(f"{value} takes {wanted} arguments, got {len(arguments)}", at)
            return ("call", value, arguments, at)
        if self.take("("):
            tree = self.expression()
            self.expect(")", "')'")
            return tree
        raise ExpressionError(f"expected a number, $argument, function or '(', found {describe(self.peek())}", at)


def describe(token) -> str:
    return "the end" if token[0] == "end" else f"'{token[1]}'"


def parse(text: str):
    parser = Parser(text)
    tree = parser.expression()
    if parser.peek()[0] != "end":
        raise ExpressionError(f"expected an operator, found {describe(parser.peek())}", parser.peek()[2])
    return tree


def arguments_of(tree) -> list[tuple[str, int]]:
    """Every `$name` of a parsed tree with its offset."""
    kind = tree[0]
    if kind == "arg":
        return [(tree[1], tree[2])]
    if kind == "neg":
        return arguments_of(tree[1])
    if kind == "op":
        return arguments_of(tree[2]) + arguments_of(tree[3])
    if kind == "call":
        return [found for argument in tree[2] for found in arguments_of(argument)]
    return []


def bind(tree, lookup):
    """The tree with each ("arg", name, at) replaced by lookup(name, at), itself a tree."""
    kind = tree[0]
    if kind == "arg":
        return lookup(tree[1], tree[2])
    if kind == "neg":
        return ("neg", bind(tree[1], lookup), tree[2])
    if kind == "op":
        return ("op", tree[1], bind(tree[2], lookup), bind(tree[3], lookup), tree[4])
    if kind == "call":
        return ("call", tree[1], [bind(argument, lookup) for argument in tree[2]], tree[3])
    return tree


def needs_shapes(tree) -> bool:
    """True when the tree uses $in_channels (directly or through an argument)."""
    kind = tree[0]
    if kind == "in":
        return True
    if kind == "neg":
        return needs_shapes(tree[1])
    if kind == "op":
        return needs_shapes(tree[2]) or needs_shapes(tree[3])
    if kind == "call":
        return any(needs_shapes(argument) for argument in tree[2])
    return False


def whole(value):
    """An integral float becomes an int (`0.5 * 64` is 32); other values stay as they are."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def checked_number(value, text, at: int):
    """`value` when it is finite and of sane size, else an ExpressionError at `at`."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise ExpressionError(f"{describe_number(text)} is not a finite number of sane size", at)
    if abs(value) > MAX_MAGNITUDE:
        raise ExpressionError(f"{describe_number(text)} is too large (more than {MAX_MAGNITUDE:.0e})", at)
    return value


def describe_number(value) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"


def evaluate(tree, block_inputs: dict | None = None):
    """The value of a bound tree; block_inputs maps a block call to its input channels.
    A result that is not finite or too large, and any arithmetic failure (a zero divisor,
    an overflow), is an ExpressionError at the operator or function that made it."""
    try:
        value = evaluate_unchecked(tree, block_inputs)
    except ExpressionError:
        raise
    except (ArithmeticError, ValueError, TypeError) as failure:
        raise ExpressionError(str(failure).split("\n")[0], tree[-1]) from None
    return checked_number(value, value, tree[-1])


def evaluate_unchecked(tree, block_inputs: dict | None):
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "in":
        return block_inputs[tree[1]]
    if kind == "neg":
        return -evaluate(tree[1], block_inputs)
    if kind == "call":
        if tree[1] == "make_divisible" and len(tree[2]) > 1:
            divisor = evaluate(tree[2][1], block_inputs)
            if divisor <= 0:
                raise ExpressionError(f"make_divisible's divisor must be > 0, not {divisor}", tree[3])
        return whole(FUNCTIONS[tree[1]][2](*(evaluate(argument, block_inputs) for argument in tree[2])))
    symbol, left, right = tree[1], evaluate(tree[2], block_inputs), evaluate(tree[3], block_inputs)
    if symbol in ("//", "/", "%") and right == 0:
        raise ExpressionError(f"division by zero ({left} {symbol} 0)", tree[4])
    return whole({"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                  "//": lambda: left // right, "/": lambda: left / right, "%": lambda: left % right}[symbol]())


@dataclass(frozen=True)
class Deferred:
    """An option value that needs $in_channels: evaluated by shape inference (shapes.py)."""

    tree: tuple
    text: str
    where: object  # nodes.Location of the expression

    def __repr__(self):
        return repr(self.text)
