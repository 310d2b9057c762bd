"""Quickstart: a tool, an agent and a graph (runs offline on the scripted model)."""

from pydantic import BaseModel

from cadenza import END, START, Agent, Graph, tool
from cadenza.testing import ScriptedModel, call


@tool(version="1.0.0")
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def _calculator(request):
    """A stand-in model: call `add` once, then answer with its result."""
    last = request.messages[-1]
    if last.role == "tool":
        return f"The sum is {last.tool_results[0].content}."
    a, b = (int(x) for x in last.text.split("+"))
    return call("add", a=a, b=b)


ScriptedModel(_calculator, name="calculator")

agent = Agent("scripted:calculator", name="calculator", instructions="Add numbers.", tools=[add])


class Counter(BaseModel):
    n: int = 0


pipeline = Graph(Counter, name="pipeline")
pipeline.add_node("first", lambda s: {"n": s.n + 1})
pipeline.add_node("second", lambda s: {"n": s.n * 10})
pipeline.add_route("second", lambda s: "big" if s.n >= 50 else "small", {"big": END, "small": "first"})
pipeline.add_edge(START, "first").add_edge("first", "second")
