/** @type {import('tailwindcss').Config} */
module.exports = {
  content: ["./app/src/**/*.rs"],
  theme: {
    extend: {},
  },
  plugins: [],
};
