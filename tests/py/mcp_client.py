"""The official MCP Python SDK's client against car-server's MCP endpoint (PROTOCOL.md §16).

Run by the e2e test `mcp::official_python_sdk_client`:

    python mcp_client.py URL TOKEN RUN_ID APPROVAL_ID

It connects with the SDK's streamable HTTP client (bearer header), initializes, lists the
tools, calls each one, lists and gets the `car_context` prompt, and prints one JSON object
with what it saw; the Rust test checks it. Any failure raises (non-zero exit).
"""

import json
import sys

import anyio
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def outcome(result):
    """A tool result as plain data: the text, the structured content, isError."""
    text = "".join(c.text for c in result.content if getattr(c, "type", None) == "text")
    return {
        "isError": bool(result.is_error),
        "text": text,
        "structured": result.structured_content,
    }


async def main(url, token, run_id, approval_id):
    report = {"calls": {}}
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                report["protocol_version"] = init.protocol_version
                report["server"] = {"name": init.server_info.name, "version": init.server_info.version}

                tools = await session.list_tools()
                report["tools"] = [t.name for t in tools.tools]

                calls = report["calls"]
                calls["memory_add_fact"] = outcome(
                    await session.call_tool("memory_add_fact", {"subject": "editor", "body": "the team uses helix"})
                )
                calls["memory_query"] = outcome(await session.call_tool("memory_query", {"query": "editor", "k": 3}))
                calls["runs_list"] = outcome(await session.call_tool("runs_list", {"limit": 5}))
                calls["runs_get_trace"] = outcome(await session.call_tool("runs_get_trace", {"run_id": run_id}))
                calls["approvals_list"] = outcome(await session.call_tool("approvals_list", {}))
                calls["approvals_resolve"] = outcome(
                    await session.call_tool("approvals_resolve", {"approval_id": approval_id, "resolution": "approve"})
                )

                prompts = await session.list_prompts()
                report["prompts"] = [p.name for p in prompts.prompts]
                prompt = await session.get_prompt("car_context", {"query": "editor team"})
                report["prompt"] = [{"role": m.role, "text": m.content.text} for m in prompt.messages]

                calls["memory_delete"] = outcome(await session.call_tool("memory_delete", {"id": "mcp-1"}))
                report["bad_arguments"] = outcome(
                    await session.call_tool("memory_add_fact", {"subject": "s", "body": ""})
                )
                await session.send_ping()
    print(json.dumps(report))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:5])
