// The official TypeScript MCP SDK's client against Warden's /mcp: connects over streamable HTTP
// with a bearer token, lists the tools, optionally calls one, ends its session, and prints
// what it got as JSON. Usage: node client.mjs URL TOKEN [TOOL ARGUMENTS_JSON]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, tool, args] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "warden-ts-test", version: "1.0.0" });
const out = {};
try {
  await client.connect(transport);
  out.protocol = transport.protocolVersion ?? null;
  out.session = transport.sessionId ?? null;
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  if (tool) {
    const progress = [];
    out.result = await client.callTool({ name: tool, arguments: JSON.parse(args) }, undefined, {
      onprogress: (p) => progress.push(p.message ?? null),
    });
    out.progress = progress;
  }
  await transport.terminateSession();
} catch (error) {
  out.error = { name: error?.name ?? "Error", message: String(error?.message ?? error), code: error?.code ?? null };
} finally {
  await client.close();
}
console.log(JSON.stringify(out));
