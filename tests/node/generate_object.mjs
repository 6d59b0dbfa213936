// The Vercel AI SDK's generateObject (Chat Completions, as SheLLM speaks)
// against a SheLLM daemon: prints the object, or the error, as one JSON line.
// Usage: node generate_object.mjs BASE_URL KEY MODEL
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, generateText, tool, stepCountIs } from "ai";
import { z } from "zod";

const [baseURL, apiKey, model] = process.argv.slice(2);
const provider = createOpenAI({ baseURL, apiKey });
const capital = z.object({ city: z.string(), population: z.number().int() });
try {
  const { object } = await generateObject({
    model: provider.chat(model),
    schema: capital,
    prompt: "The capital of France?",
    maxRetries: 0,
  });
  const ran = [];
  const { text, steps } = await generateText({
    model: provider.chat(model),
    prompt: "Weather in Paris?",
    maxRetries: 0,
    stopWhen: stepCountIs(3),
    tools: {
      get_weather: tool({
        description: "The weather in a city",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => { ran.push(city); return `sunny in ${city}`; },
      }),
    },
  });
  console.log(JSON.stringify({ object, text, ran, steps: steps.length }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error && error.message || error) }));
  process.exitCode = 1;
}
